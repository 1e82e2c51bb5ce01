"""The error tree: code above the adapters sees only HpcsyncError."""

from __future__ import annotations


class HpcsyncError(Exception):
    """Base of every error hpcsync raises on purpose; its message is one readable line."""

    exit_code = 1


class ConfigError(HpcsyncError):
    """The configuration is invalid; the message lists every problem."""

    exit_code = 2


class SchedulerUnavailable(HpcsyncError):
    """Slurm did not answer, answered with an error, or printed what we cannot parse."""


class StorageError(HpcsyncError):
    """The tracking database could not be reached or refused a write."""


class AlreadyRunning(HpcsyncError):
    """Another daemon holds the lock for this cluster and database."""
