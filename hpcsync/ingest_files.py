"""Which files belong to a run: its StdOut and StdErr, its GPU sample files, files in log roots.

The rules (`run_files` here, `files_in_root` in logs/watcher.py):
- its StdOut and StdErr as Slurm expanded them (Slurm's default `slurm-%j.out` in the work
  directory when the job set none);
- the GPU sample files `hpcsync-<job id>-<node>.gpu.jsonl` beside its StdOut, one per node of
  the job, named exactly, so nothing is listed;
- files directly in a log root (its top level only, one `scandir` per root; never a tree walk)
  whose name carries the job id as a whole number (`slurm-1234.out`, `train.1234_7.log`, not
  `slurm-12345.out`) and ends in .out, .err, .log, .txt or .jsonl, and the sample files
  `hpcsync-<job id>-*.gpu.jsonl` there. An array task matches its `1234_7` and its raw id. A
  file last written before the job was submitted belongs to an older job with the same id;
- the run manifest `hpcsync-<job id>.run.json` (see manifest.py) beside its StdOut, named
  exactly, and in each log root where it exists when the roots are scanned (one `stat` per
  run and root, no listing).

A path is registered with its directory part resolved and its last component as named: a
symbolic link there is refused when read, never followed (see logs/safe_open.py). Each read is
checked against the run's FilePolicy (`file_policy`): its log roots, its output directories and
its user. An output sent to /dev/null is not a file of the run.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from typing import Literal

from hpcsync.logs.safe_open import FilePolicy, RefusedFile
from hpcsync.logs.watcher import Kind, expand_hostlist
from hpcsync.logs.watcher import kind_of as log_kind_of
from hpcsync.manifest import is_manifest_name, manifest_name
from hpcsync.models import Run
from hpcsync.slurm.patterns import default_output

FileKind = Literal["log", "gpu", "manifest"]

CLOCK_SKEW_SECONDS = 300.0
"""How much earlier than the job's submission a root file may have been written and be its."""


def run_files(run: Run) -> list[tuple[str, Kind]]:
    """Return StdOut, StdErr and (unless the job has no GPUs) its per-node sample files beside."""
    job = run.job
    outputs = _outputs(run)
    files: list[tuple[str, Kind]] = []
    for path in outputs:
        if "%" in path and not job.node_list:
            continue  # `%N` stays unexpanded until the job has a node
        files.append((path, "log"))
    if outputs and job.node_list and job.num_gpus != 0:
        directory = os.path.dirname(outputs[0])
        for node in expand_hostlist(job.node_list):
            files.append((os.path.join(directory, f"hpcsync-{job.job_id}-{node}.gpu.jsonl"), "gpu"))
    return files


def manifest_files(run: Run) -> list[tuple[str, FileKind]]:
    """Return the run manifest beside the job's StdOut (none until a `%N` in its path is known)."""
    job = run.job
    outputs = _outputs(run)
    if not outputs:
        return []
    directory = os.path.dirname(outputs[0])
    if "%" in directory and not job.node_list:
        return []
    return [(os.path.join(directory, manifest_name(job.job_id)), "manifest")]


def root_manifests(roots: Sequence[str], runs: Sequence[Run]) -> Iterator[tuple[Run, str]]:
    """Yield (run, path) for the run manifests present in the log roots and written for the run."""
    for root in roots:
        for run in runs:
            path = os.path.join(root, manifest_name(run.job.job_id))
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if written_since(mtime, run):
                yield run, path


def kind_of(path: str) -> FileKind:
    """Return "manifest" for a run manifest's name, "gpu" for a sample file's, else "log"."""
    return "manifest" if is_manifest_name(os.path.basename(path)) else log_kind_of(path)


def written_since(mtime: float, run: Run) -> bool:
    """False for a file last written before the job was submitted (an older job's, same id)."""
    submitted = run.job.submitted_at
    return submitted is None or mtime >= submitted.timestamp() - CLOCK_SKEW_SECONDS


def file_policy(run: Run, roots: Sequence[str]) -> FilePolicy:
    """Return where the run's files may lie (its roots, its output directories) and whose."""
    return FilePolicy.for_job(roots, _outputs(run), run.job.user_name)


def resolve_directory(path: str) -> str:
    """Return path with its directory resolved (symlinks too) and its last component kept."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(directory), name)


def failure_reason(exc: BaseException) -> str:
    """Return a short name for why a file failed, to log each file once per reason."""
    if isinstance(exc, RefusedFile):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def gives_up(exc: BaseException) -> bool:
    """True for failures an ended run's file is not retried for (refused, permission denied)."""
    return isinstance(exc, RefusedFile | PermissionError)


def _outputs(run: Run) -> list[str]:
    """Return StdOut and StdErr as named (Slurm's default when neither is), without /dev/null."""
    job = run.job
    paths = [path for path in (job.stdout_path, job.stderr_path) if path]
    if not paths and job.work_dir:
        paths = [default_output(job)]
    return [path for path in paths if path != os.devnull]
