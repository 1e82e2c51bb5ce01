"""pyslurm.settings: the local cluster's name."""

from __future__ import annotations

from pyslurm import _standin


def __getattr__(name: str) -> str:
    if name == "LOCAL_CLUSTER":
        return _standin.config["cluster_name"]
    raise AttributeError(name)
