"""Slurm's stdout/stderr filename patterns (`%j`, `%A_%a`, `%x`, ...), expanded as slurmstepd does."""

from __future__ import annotations

import re

from hpcsync.models import Job

NO_VAL = 4294967294
"""What Slurm prints for `%a` in a job that is not an array task."""

_MAX_WIDTH = 10
_TOKEN = re.compile(r"%(%|(\d*)([A-Za-z]))")


def first_node(node_list: str | None) -> str | None:
    """Return the first host of a Slurm hostlist (`gpu[03-05],cpu1` gives `gpu03`), or None."""
    if not node_list:
        return None
    depth = 0
    end = len(node_list)
    for index, char in enumerate(node_list):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            end = index
            break
    host = node_list[:end]
    if "[" not in host or "]" not in host:
        return host or None
    prefix, rest = host.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return f"{prefix}{first}{suffix}"


def expand_pattern(pattern: str, job: Job, node: str | None = None) -> str:
    """Return the path a batch job's `--output` pattern names, resolved against its work_dir."""
    # As slurmstepd: `%N` is `node` or the job's first node (kept as written while it has none);
    # a pattern with a backslash is literal, backslashes removed; unknown `%x` sequences stay.
    if "\\" in pattern:
        expanded = pattern.replace("\\", "")
    else:
        host = node or first_node(job.node_list)
        expanded = _TOKEN.sub(lambda match: _substitute(match, job, host), pattern)
    if not expanded.startswith("/") and job.work_dir:
        return f"{job.work_dir.rstrip('/')}/{expanded}"
    return expanded


def default_output(job: Job) -> str:
    """Return the path Slurm writes a batch job's output to when it set no `--output`."""
    if job.array_task_id is not None:
        return expand_pattern("slurm-%A_%a.out", job)
    return expand_pattern("slurm-%j.out", job)


def _substitute(match: re.Match[str], job: Job, host: str | None) -> str:
    """Return the text one `%` sequence stands for, or the sequence itself if it is unknown."""
    if match.group(1) == "%":
        return "%"
    width = min(int(match.group(2)), _MAX_WIDTH) if match.group(2) else 0
    letter = match.group(3)
    is_task = job.array_task_id is not None
    numbers: dict[str, int] = {
        "j": job.job_id_raw,
        "J": job.job_id_raw,
        "A": job.array_job_id if is_task and job.array_job_id is not None else job.job_id_raw,
        "a": job.array_task_id if job.array_task_id is not None else NO_VAL,
        "n": 0,
        "t": 0,
    }
    if letter in numbers:
        return f"{numbers[letter]:0{width}d}"
    words: dict[str, str | None] = {
        "x": job.name,
        "u": job.user_name,
        "N": host,
        "s": "batch",
    }
    value = words.get(letter)
    return match.group(0) if value is None else value
