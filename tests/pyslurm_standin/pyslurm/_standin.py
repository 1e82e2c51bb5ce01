"""What the stand-in serves: scenario records, the cluster's config, and scripted failures."""

from __future__ import annotations

from collections import Counter
from typing import Any

controller: list[dict[str, Any]] = []
"""slurm_job_info_t-like records, as slurmctld holds them."""
accounting: list[dict[str, Any]] = []
"""slurmdb_job_rec_t-like records, as slurmdbd holds them."""
config: dict[str, str] = {"cluster_name": "hpctest", "version": "25.11.2"}
failure: str | None = None
calls: Counter[str] = Counter()


def load_scenario(
    controller_records: list[dict[str, Any]],
    accounting_records: list[dict[str, Any]],
    *,
    cluster_name: str = "hpctest",
    version: str = "25.11.2",
) -> None:
    """Replace everything the stand-in serves."""
    controller[:] = controller_records
    accounting[:] = accounting_records
    config.update(cluster_name=cluster_name, version=version)
    fail(None)
    calls.clear()


def fail(message: str | None) -> None:
    """Make every RPC raise RPCError(msg=message); None stops failing."""
    global failure
    failure = message


def rpc(name: str) -> None:
    """Count one RPC and raise the scripted failure, if any."""
    from pyslurm.core.error import RPCError

    calls[name] += 1
    if failure is not None:
        raise RPCError(msg=failure)
