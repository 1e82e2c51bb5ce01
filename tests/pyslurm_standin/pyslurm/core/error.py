"""pyslurm.core.error: pyslurm's exceptions."""

from __future__ import annotations

SLURM_ERROR = -1


class PyslurmError(Exception):
    """The base Exception for all Pyslurm errors."""


class RPCError(PyslurmError):
    """Exception for handling Slurm RPC errors."""

    def __init__(self, errno: int = SLURM_ERROR, msg: str | None = None) -> None:
        self.errno = errno
        self.msg = msg or "Unspecified error"
        super().__init__(self.msg)
