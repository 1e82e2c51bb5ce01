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
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Literal

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
    outputs = [path for path in (job.stdout_path, job.stderr_path) if path]
    if not outputs and job.work_dir:
        outputs = [default_output(job)]
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
    output = job.stdout_path or job.stderr_path or (job.work_dir and default_output(job))
    if not output:
        return []
    directory = os.path.dirname(output)
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
