"""Slurm behind the Scheduler interface: the CLI backend, the pyslurm backend and a fake."""

from __future__ import annotations

import logging
from datetime import tzinfo

from hpcsync.errors import ConfigError, SchedulerUnavailable
from hpcsync.slurm.base import Scheduler
from hpcsync.slurm.cli import CliScheduler
from hpcsync.slurm.fake import FakeScheduler

__all__ = ["CliScheduler", "FakeScheduler", "Scheduler", "make_scheduler", "same_release"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cli", "pyslurm")


def same_release(first: str, second: str) -> bool:
    """Say whether two versions share a Slurm release (`25.11.2`, `25.11.0`; `22.05.8`, `22.5.1`)."""
    release = _release(first)
    return bool(release) and release == _release(second)


def _release(version: str) -> tuple[int, ...]:
    """Return the major and minor number of a version, or () if it has none."""
    parts = version.strip().split(".")[:2]
    try:
        return tuple(int(part) for part in parts) if len(parts) == 2 else ()
    except ValueError:
        return ()


def make_scheduler(
    backend: str,
    *,
    timeout: float,
    squeue: str = "squeue",
    sacct: str = "sacct",
    scontrol: str = "scontrol",
    tz: tzinfo | None = None,
) -> Scheduler:
    """Return the `auto`, `cli` or `pyslurm` backend and log which and why; ConfigError if unknown."""
    # `auto` takes pyslurm when it imports and was built for the cluster's Slurm release;
    # an explicit `pyslurm` that cannot be imported raises SchedulerUnavailable.
    if backend not in BACKENDS:
        raise ConfigError(f"slurm.backend: unknown backend {backend!r}; use auto, cli or pyslurm")
    cli = CliScheduler(timeout=timeout, squeue=squeue, sacct=sacct, scontrol=scontrol, tz=tz)
    if backend == "cli":
        logger.info("slurm backend: cli (configured)")
        return cli
    from hpcsync.slurm import pyslurm_backend

    if backend == "pyslurm":
        chosen = pyslurm_backend.PyslurmScheduler()
        logger.info("slurm backend: pyslurm (configured)")
        return chosen
    pyslurm_version = pyslurm_backend.pyslurm_version()
    if pyslurm_version is None:
        logger.info("slurm backend: cli (pyslurm is not installed)")
        return cli
    try:
        cluster_version = cli.version()
    except SchedulerUnavailable as exc:
        logger.info("slurm backend: cli (cannot read the cluster's Slurm version: %s)", exc)
        return cli
    if not same_release(pyslurm_version, cluster_version):
        logger.info(
            "slurm backend: cli (pyslurm %s does not match Slurm %s)",
            pyslurm_version,
            cluster_version,
        )
        return cli
    try:
        chosen = pyslurm_backend.PyslurmScheduler()
    except SchedulerUnavailable as exc:
        logger.info("slurm backend: cli (%s)", exc)
        return cli
    logger.info("slurm backend: pyslurm %s for Slurm %s", pyslurm_version, cluster_version)
    return chosen
