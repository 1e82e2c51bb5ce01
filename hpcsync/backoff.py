"""Exponential backoff between failing attempts, logged once per outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hpcsync.errors import HpcsyncError

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff between failing attempts, logged once per outage."""

    def __init__(
        self, base: float, ceiling: float, monotonic: Callable[[], float] = time.monotonic
    ):
        self.base = base
        self.ceiling = ceiling
        self.monotonic = monotonic
        self.failures = 0
        self.failing_since: float | None = None
        self._next_try = 0.0

    def ready(self) -> bool:
        """True when an attempt is due."""
        return self.monotonic() >= self._next_try

    def failed(self, what: str, error: HpcsyncError) -> None:
        """Record a failure; the first of an outage logs one ERROR line."""
        now = self.monotonic()
        self.failures += 1
        delay = min(self.ceiling, self.base * 2 ** (self.failures - 1))
        self._next_try = now + delay
        if self.failing_since is None:
            self.failing_since = now
            log.error("%s: %s; retrying with backoff up to %.0f s", what, error, self.ceiling)
        else:
            log.debug("%s still failing (%d tries): %s", what, self.failures, error)

    def succeeded(self, what: str) -> None:
        """Record a success; the end of an outage logs one line."""
        if self.failing_since is not None:
            log.warning(
                "%s recovered after %.0f s and %d failed tries",
                what,
                self.monotonic() - self.failing_since,
                self.failures,
            )
        self.failures = 0
        self.failing_since = None
        self._next_try = 0.0
