"""Compile the fake `libnvidia-ml.so.1` with the machine's C compiler.

Import by path (tests/ is not a package); see README.md beside this file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
OMITTABLE = frozenset({"minor", "utilization", "memory", "power", "temperature"})
DEFAULT_OMIT = ("temperature",)


def find_compiler() -> str | None:
    """Return the path of `cc` (or `gcc`), or None when the machine has no C compiler."""
    return shutil.which("cc") or shutil.which("gcc")


def build_fake_nvml(out_dir: Path, omit: Iterable[str] = DEFAULT_OMIT) -> Path:
    """Compile the fake into a subdirectory of out_dir and return that directory.

    Put the returned directory first on LD_LIBRARY_PATH. `omit` names functions to leave out of
    the library (pynvml then raises NVMLError_FunctionNotFound for them); by default the
    temperature function is missing. Raises RuntimeError without a compiler, CalledProcessError
    when compilation fails, ValueError for an unknown name in `omit`.
    """
    left_out = sorted(set(omit))
    unknown = set(left_out) - OMITTABLE
    if unknown:
        raise ValueError(f"cannot omit {sorted(unknown)}; choose from {sorted(OMITTABLE)}")
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    target_dir = Path(out_dir) / ("omit-" + "-".join(left_out) if left_out else "full")
    target_dir.mkdir(parents=True, exist_ok=True)
    library = target_dir / LIBRARY_NAME
    if library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target_dir
    defines = [f"-DFAKE_NVML_OMIT_{name.upper()}" for name in left_out]
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O0",
            "-Wall",
            "-Werror",
            f"-Wl,-soname,{LIBRARY_NAME}",
            *defines,
            "-o",
            str(library),
            str(SOURCE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target_dir
