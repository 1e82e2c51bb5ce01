"""Read-only queries behind `hpcsync runs` and `hpcsync show`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select

from hpcsync.db.params_store import load_params
from hpcsync.db.tables import experiments, metrics, run_events, runs
from hpcsync.models import RunEvent

__all__ = ["RunFilter", "RunQueries", "run_select"]


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs `list_runs` returns."""

    experiment: str | None = None
    status: str | None = None
    user: str | None = None
    cluster: str | None = None
    limit: int = 100


def run_select() -> Any:
    """Return a select of every runs column plus the experiment's name."""
    return select(runs, experiments.c.name.label("experiment")).join(
        experiments, experiments.c.id == runs.c.experiment_id
    )


class RunQueries:
    """Queries for the views; mixed into Repository, which supplies `atomic()`."""

    def atomic(self) -> AbstractContextManager[Connection]:
        """Return a transaction context (Repository's)."""
        raise NotImplementedError

    def list_runs(self, where: RunFilter) -> list[dict[str, Any]]:
        """Return runs as dicts (with `experiment`), newest submission first."""
        query = run_select()
        if where.experiment:
            query = query.where(experiments.c.name == where.experiment)
        if where.status:
            query = query.where(runs.c.status == where.status)
        if where.user:
            query = query.where(runs.c.user_name == where.user)
        if where.cluster:
            query = query.where(runs.c.cluster == where.cluster)
        query = query.order_by(runs.c.submitted_at.desc(), runs.c.id.desc()).limit(where.limit)
        with self.atomic() as connection:
            return [_view_row(row) for row in connection.execute(query).mappings()]

    def find_run(self, job_id: str, cluster: str | None = None) -> dict[str, Any] | None:
        """Return the newest run with this Slurm job id (or raw id), with its events; or None."""
        query = run_select()
        if cluster:
            query = query.where(runs.c.cluster == cluster)
        matches = runs.c.slurm_job_id == job_id
        if job_id.isdigit():
            matches = matches | (runs.c.slurm_job_id_raw == int(job_id))
        query = query.where(matches).order_by(runs.c.submitted_at.desc()).limit(1)
        with self.atomic() as connection:
            row = connection.execute(query).mappings().first()
            if row is None:
                return None
            found = _view_row(row)
            events = connection.execute(
                select(
                    run_events.c.at,
                    run_events.c.from_state,
                    run_events.c.to_state,
                    run_events.c.reason,
                )
                .where(run_events.c.run_id == found["id"])
                .order_by(run_events.c.at, run_events.c.id)
            ).mappings()
            found["events"] = [dict(event_row) for event_row in events]
            found["metrics"] = _latest_metrics(connection, found["id"])
            found["params"] = load_params(connection, found["id"])
        return found

    def events_for(self, run_id: int) -> list[RunEvent]:
        """Return a run's events in order."""
        query = (
            select(run_events)
            .where(run_events.c.run_id == run_id)
            .order_by(run_events.c.at, run_events.c.id)
        )
        with self.atomic() as connection:
            return [
                RunEvent(
                    at=row.at, from_state=row.from_state, to_state=row.to_state, reason=row.reason
                )
                for row in connection.execute(query)
            ]

    def latest_losses(self, run_ids: Sequence[int]) -> dict[int, tuple[str, float]]:
        """Return each run's main loss curve name and its value at the latest step."""
        if not run_ids:
            return {}
        last = (
            select(metrics.c.run_id, metrics.c.name, func.max(metrics.c.step).label("step"))
            .where(metrics.c.run_id.in_(run_ids), metrics.c.name.like("%loss%"))
            .group_by(metrics.c.run_id, metrics.c.name)
            .subquery()
        )
        query = select(metrics.c.run_id, metrics.c.name, metrics.c.value).join(
            last,
            (last.c.run_id == metrics.c.run_id)
            & (last.c.name == metrics.c.name)
            & (last.c.step == metrics.c.step),
        )
        values: dict[int, dict[str, float]] = {}
        with self.atomic() as connection:
            for row in connection.execute(query):
                values.setdefault(row.run_id, {})[row.name] = row.value
        chosen: dict[int, tuple[str, float]] = {}
        for run_id, by_name in values.items():
            name = main_curve_name(list(by_name))
            if name is not None:
                chosen[run_id] = (name, by_name[name])
        return chosen

    def metric_series(self, run_id: int, name: str) -> list[tuple[int, float]]:
        """Return one metric's (step, value) points in step order."""
        query = (
            select(metrics.c.step, metrics.c.value)
            .where(metrics.c.run_id == run_id, metrics.c.name == name)
            .order_by(metrics.c.step)
        )
        with self.atomic() as connection:
            return [(int(row.step), float(row.value)) for row in connection.execute(query)]

    def count_runs(self, cluster: str | None = None) -> int:
        """Return how many runs are stored."""
        query = select(func.count()).select_from(runs)
        if cluster:
            query = query.where(runs.c.cluster == cluster)
        with self.atomic() as connection:
            return int(connection.execute(query).scalar_one())


def main_curve_name(names: Sequence[str]) -> str | None:
    """Return the metric a view shows first: `loss`, else the shortest name with `loss`, else None."""
    if "loss" in names:
        return "loss"
    losses = sorted((name for name in names if "loss" in name.lower()), key=lambda n: (len(n), n))
    return losses[0] if losses else None


def _latest_metrics(connection: Connection, run_id: int) -> dict[str, dict[str, Any]]:
    last = (
        select(metrics.c.name, func.max(metrics.c.step).label("step"))
        .where(metrics.c.run_id == run_id)
        .group_by(metrics.c.name)
        .subquery()
    )
    query = (
        select(metrics.c.name, metrics.c.step, metrics.c.value, metrics.c.timestamp)
        .join(last, (last.c.name == metrics.c.name) & (last.c.step == metrics.c.step))
        .where(metrics.c.run_id == run_id)
        .order_by(metrics.c.name)
    )
    return {
        row.name: {"step": row.step, "value": row.value, "timestamp": row.timestamp}
        for row in connection.execute(query)
    }


def _view_row(row: RowMapping) -> dict[str, Any]:
    found = dict(row)
    found["tags"] = json.loads(found["tags"] or "{}")
    return found
