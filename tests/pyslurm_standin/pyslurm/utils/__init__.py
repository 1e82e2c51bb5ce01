"""pyslurm.utils: the conversions pyslurm applies to Slurm's C fields, reimplemented."""

from __future__ import annotations

import os
import re
from typing import Any

NO_VAL = 0xFFFFFFFE
INFINITE = 0xFFFFFFFF
NO_VAL16 = 0xFFFE
MEM_PER_CPU = 0x8000000000000000
SLURM_BATCH_SCRIPT = 0xFFFFFFFB
UNLIMITED = "UNLIMITED"

_MIB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


def u32_parse(
    val: int | None, on_inf: Any = UNLIMITED, on_noval: Any = None, zero_is_noval: bool = True
) -> Any:
    """pyslurm.utils.uint.u32_parse: NO_VAL (and, by default, 0) become on_noval."""
    if val is None or val == NO_VAL or (val == 0 and zero_is_noval):
        return on_noval
    if val == INFINITE:
        return on_inf
    return val


def raw_time(time: int | None, on_noval: Any = None) -> Any:
    """pyslurm.utils.ctime._raw_time: 0 and NO_VAL are on_noval."""
    if not time or time == NO_VAL:
        return on_noval
    return time


def get_exit_code(status: int | None) -> tuple[int, int]:
    """pyslurm.utils.helpers._get_exit_code: a wait status as (exit code, signal)."""
    if status is None or status == NO_VAL:
        return 0, 0
    if os.WIFSIGNALED(status):
        return 0, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    return (code - 128 if code >= 128 else code), 0


def dehumanize(value: str) -> int:
    """pyslurm.utils.helpers.dehumanize: `100M`, `2G` as MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", value)
    if match is None:
        raise ValueError(f"Invalid value specified: {value}")
    return round(float(match.group(1)) * _MIB[match.group(2) or "M"])


def tres_dict(tres_str: str | None) -> dict[str, str]:
    """pyslurm.utils.cstr.to_dict of a TRES string."""
    if not tres_str:
        return {}
    return dict(item.split("=", 1) for item in tres_str.split(",") if "=" in item)


def find_tres_count(tres_str: str | None, name: str, on_noval: Any = 0) -> Any:
    """slurmdb_find_tres_count_in_string: the count of one TRES (mem in MiB)."""
    value = tres_dict(tres_str).get(name)
    if value is None:
        return on_noval
    return dehumanize(value) if name == "mem" else int(value)


def expand_stdio(path: str | None, job: dict[str, Any]) -> str | None:
    """src/common/print_fields.c expand_stdio_fields, for a batch job record."""
    if not path:
        return None
    prefix = ""
    if not path.startswith("/") and job.get("work_dir"):
        prefix = job["work_dir"].rstrip("/") + "/"
    if "\\" in path:
        return prefix + path.replace("\\", "")
    array_job_id = job.get("array_job_id") or 0
    task = job.get("array_task_id", NO_VAL)
    numbers = {
        "A": array_job_id if array_job_id else job["job_id"],
        "a": NO_VAL if task is None else task,
        "j": job["job_id"],
        "J": job["job_id"],
        "n": 0,
        "t": 0,
    }
    words = {"x": job.get("name", ""), "u": job.get("user_name", ""), "s": "batch"}

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) == "%":
            return "%"
        width, letter = int(match.group(2) or 0), match.group(3)
        if letter in numbers:
            return f"{numbers[letter]:0{min(width, 10)}d}"
        if letter in words:
            return str(words[letter])
        return match.group(0)

    return prefix + re.sub(r"%(%|(\d*)([A-Za-z]))", substitute, path)
