"""pyslurm.slurmctld: the controller's configuration."""

from __future__ import annotations

from pyslurm import _standin


class Config:
    """The loaded slurm.conf (only what hpcsync reads)."""

    def __init__(self) -> None:
        raise RuntimeError(
            "Cannot instantiate class directly. Use slurmctld.Config.load() to get an instance."
        )

    @staticmethod
    def load() -> Config:
        """Load the controller's configuration (raises RPCError when it cannot be reached)."""
        _standin.rpc("slurm_load_ctl_conf")
        config = Config.__new__(Config)
        config.cluster_name = _standin.config["cluster_name"]
        config.version = _standin.config["version"]
        return config

    cluster_name: str
    version: str
