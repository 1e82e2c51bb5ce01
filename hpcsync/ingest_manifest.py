"""Run manifests in ingestion: read whole when they change, stored as run params and `runs.seed`.

A manifest is small and rewritten whole (`hpcsync manifest` replaces it by rename), so it has
no byte cursor: the ingester keeps the SHA-256 of the content last handled in memory (the
`fingerprint` of the file's CursorRow, never saved) and reads the file again whenever the
watcher reports it. Content already handled is skipped; new content replaces the run's params
in one transaction (see params_store.py), so a read repeated after a crash or a restart writes
the same rows. A manifest that cannot be parsed logs one WARNING and is skipped until its
content changes; it never stops other files. A manifest last written before the job was
submitted belongs to an older job with the same id and is ignored. It is opened by
`open_log` under the run's FilePolicy; a refusal is raised to the ingester, which counts it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

from hpcsync.db.metric_store import CursorRow
from hpcsync.db.params_store import replace_params, set_seed
from hpcsync.db.repository import Repository
from hpcsync.ingest_files import written_since
from hpcsync.logs.safe_open import FilePolicy, RefusedFile, open_log
from hpcsync.manifest import MAX_BYTES, ManifestError, parse_manifest
from hpcsync.models import Run

log = logging.getLogger(__name__)


def read_manifest(
    repository: Repository, cursor: CursorRow, run: Run, policy: FilePolicy | None = None
) -> tuple[CursorRow, int | None]:
    """Store a run's manifest if its content is new; return the cursor and rows written.

    Rows written is None when nothing new was stored. Raises StorageError (then retry) and
    RefusedFile (the file breaks the policy).
    """
    path, job_id = cursor.path, run.job.job_id
    try:
        with os.fdopen(open_log(path, policy), "rb") as handle:
            status = os.fstat(handle.fileno())
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return cursor, None
    except RefusedFile:
        raise
    except OSError as exc:
        log.warning("job %s: cannot read run manifest %s: %s", job_id, path, exc)
        return cursor, None
    if not written_since(status.st_mtime, run):
        log.debug("job %s: %s predates the job; ignored", job_id, path)
        return cursor, None
    digest = hashlib.sha256(data).hexdigest()
    if digest == cursor.fingerprint:
        return cursor, None
    seen = dataclasses.replace(
        cursor,
        device=status.st_dev,
        inode=status.st_ino,
        offset=len(data),
        fingerprint=digest,
    )
    try:
        if len(data) > MAX_BYTES:
            raise ManifestError(f"larger than {MAX_BYTES} bytes")
        manifest = parse_manifest(data.decode("utf-8"))
    except (ManifestError, UnicodeDecodeError) as exc:
        log.warning("job %s: run manifest %s ignored: %s", job_id, path, _one_line(exc))
        return seen, None
    assert run.id is not None
    params = manifest.run_params()
    with repository.atomic() as connection:
        written = replace_params(connection, run.id, params)
        set_seed(connection, run.id, manifest.seed)
    # A restarted daemon reads the manifests of live runs again: that changes nothing, quietly.
    log.log(
        logging.INFO if written else logging.DEBUG,
        "job %s: run manifest read: %d params, git %s, seed %s",
        job_id,
        len(params),
        (manifest.git_sha or "unknown")[:12],
        "none" if manifest.seed is None else manifest.seed,
    )
    return seen, written


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
