"""Stand-in for pyslurm 25.11 (tests only): its API, backed by scenario data; see ../README.md."""

from pyslurm import _standin, db, slurmctld
from pyslurm.core.error import PyslurmError, RPCError
from pyslurm.core.job import Job, Jobs

__version__ = "25.11.2"

__all__ = ["Job", "Jobs", "PyslurmError", "RPCError", "_standin", "db", "slurmctld"]
