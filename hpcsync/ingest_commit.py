"""One writer thread that commits a file's chunks while the reader parses the next one.

A backlog (a file read in several chunks) is parsed and committed one chunk at a time. Parsing
is Python work, committing is mostly the database's (PostgreSQL's server process, SQLite's C
code with the GIL released), so the two overlap when the commit runs on its own thread.

The rules that keep ingestion exactly once hold as before:
- a chunk's points and the cursor after them commit in one transaction, in file order;
- at most one commit is in flight, so chunk N+1 never commits before chunk N;
- the caller's committed state changes only inside the commit, after its transaction;
- a failed commit raises from the next `submit` or `drain`, so the chunks parsed after it are
  dropped and their bytes are read again from the last committed cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class ChunkCommitter:
    """Runs commits in order on one lazily started thread, one at a time."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def submit(self, commit: Callable[[], None]) -> None:
        """Wait for the previous commit (raising its error), then start this one."""
        self.drain()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpcsync-commit")
        self._pending = self._executor.submit(commit)

    def drain(self) -> None:
        """Wait for the commit in flight, if any; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the commit in flight and stop the thread."""
        try:
            self.drain()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
