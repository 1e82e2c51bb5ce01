"""Run manifests: the hyperparameters, git SHA and seed an sbatch template records for its run.

A template writes `hpcsync-<job id>.run.json` beside the job's log (the job id as Slurm prints
it: `1234`, or `1234_7` for an array task), with `hpcsync manifest`, before the training
starts. The daemon reads it whole, again whenever it changes, and stores it as the run's
parameters (`run_params`) and `runs.seed`. The file is one JSON object:

    {"version": 1, "params": {"lr": "0.1", "batch_size": "64"},
     "git_sha": "0f3c2d…", "git_dirty": false, "seed": 1234}

- `params`: parameter name to value. Strings, numbers and booleans are stored as text (`0.1`,
  `64`, `true`), lists and objects as compact JSON, `null` leaves the parameter out.
- `git_sha`: the commit of the training code, 7 to 64 hex digits; stored as the param `git_sha`.
- `git_dirty`: whether that checkout had uncommitted changes; stored as the param `git_dirty`.
- `seed`: an integer (or its decimal text); stored in `runs.seed` and as the param `seed`.
- Every key is optional; unknown top-level keys are ignored, so newer templates stay readable.
The names `git_sha`, `git_dirty` and `seed` belong at the top level, not in `params`.
`parse_manifest` is pure; `manifest_command` is `hpcsync manifest`, run inside the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcsync.errors import HpcsyncError

log = logging.getLogger(__name__)

VERSION = 1
MAX_BYTES = 1 << 20
"""A larger file is not a manifest."""
MAX_PARAMS = 1000
MAX_KEY = 250
MAX_VALUE = 6000
"""MLflow's limits for a param's name and value."""
RESERVED = ("git_sha", "git_dirty", "seed")
SEED_RANGE = (-(2**63), 2**63 - 1)
DEFAULT_OUTPUT = "hpcsync-%j.run.json"
GIT_TIMEOUT = 10.0

_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_NAME = re.compile(r"hpcsync-(\d+(?:_\d+)?)\.run\.json")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class ManifestError(HpcsyncError):
    """A manifest, or a `--param`, that cannot be read; the message is one line."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a job's template recorded about its run."""

    params: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    git_dirty: bool | None = None
    seed: int | None = None

    def run_params(self) -> dict[str, str]:
        """Return the params to store: the template's, plus `git_sha`, `git_dirty` and `seed`."""
        found = dict(self.params)
        if self.git_sha is not None:
            found["git_sha"] = self.git_sha
        if self.git_dirty is not None:
            found["git_dirty"] = _text(self.git_dirty)
        if self.seed is not None:
            found["seed"] = str(self.seed)
        return found


def manifest_name(job_id: str) -> str:
    """Return the manifest's file name for a job id as Slurm prints it (`1234`, `1234_7`)."""
    return f"hpcsync-{job_id}.run.json"


def is_manifest_name(name: str) -> bool:
    """True for a manifest's file name."""
    return _NAME.fullmatch(name) is not None


def parse_manifest(text: str) -> Manifest:
    """Return the manifest in a file's text; raises ManifestError naming the first problem."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"not a JSON object but {_kind(data)}")
    version = data.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(f"version must be a positive integer, not {version!r}")
    raw = data.get("params", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ManifestError(f"params must be an object, not {_kind(raw)}")
    if len(raw) > MAX_PARAMS:
        raise ManifestError(f"{len(raw)} params; at most {MAX_PARAMS}")
    params: dict[str, str] = {}
    for key, value in raw.items():
        check_key(key)
        if value is None:
            continue
        text_value = _text(value)
        if len(text_value) > MAX_VALUE:
            raise ManifestError(f"param {key!r} is longer than {MAX_VALUE} characters")
        params[key] = text_value
    return Manifest(
        params=params,
        git_sha=_git_sha(data.get("git_sha")),
        git_dirty=_git_dirty(data.get("git_dirty")),
        seed=parse_seed(data.get("seed")),
    )


def check_key(key: str) -> None:
    """Raise ManifestError unless `key` can name a param."""
    if not key or not key.strip():
        raise ManifestError("a param has an empty name")
    if len(key) > MAX_KEY:
        raise ManifestError(f"param name {key[:40]!r}... is longer than {MAX_KEY} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise ManifestError(f"param name {key!r} holds control characters")
    if key in RESERVED:
        raise ManifestError(f"{key!r} belongs at the top level of the manifest, not in params")


def parse_seed(value: object) -> int | None:
    """Return a seed given as an integer or its decimal text (None for none); raises ManifestError."""
    if value is None or value == "":
        return None
    seed: int | None = None
    number = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(number, str) and re.fullmatch(r"\s*[-+]?\d{1,20}\s*", number):
        seed = int(number)
    elif isinstance(number, int) and not isinstance(number, bool):
        seed = number
    if seed is None or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ManifestError(f"seed must be a 64-bit integer, not {value!r}")
    return seed


def parse_param(text: str) -> tuple[str, str]:
    """Return (name, value) of a `NAME=VALUE` argument; raises ManifestError."""
    key, equals, value = text.partition("=")
    if not equals:
        raise ManifestError(f"--param {text!r} is not NAME=VALUE")
    key = key.strip()
    check_key(key)
    if len(value) > MAX_VALUE:
        raise ManifestError(f"param {key!r} is longer than {MAX_VALUE} characters")
    return key, value


def format_manifest(manifest: Manifest) -> str:
    """Return the manifest as the JSON text `parse_manifest` reads back."""
    data: dict[str, Any] = {"version": VERSION, "params": manifest.params}
    for key in RESERVED:
        value = getattr(manifest, key)
        if value is not None:
            data[key] = value
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value).lower()
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _git_sha(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SHA.fullmatch(value):
        raise ManifestError(f"git_sha must be 7 to 64 hex digits, not {str(value)[:80]!r}")
    return value.lower()


def _git_dirty(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ManifestError(f"git_dirty must be true or false, not {value!r}")


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# -- `hpcsync manifest`, inside the job -------------------------------------------------------


def git_state(directory: str, run: Runner | None = None) -> tuple[str | None, bool | None]:
    """Return (HEAD's commit, has uncommitted changes) of a checkout; (None, None) if not one."""
    runner = run or _run_git
    try:
        head = runner(["git", "-C", directory, "rev-parse", "--verify", "HEAD"])
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("no git SHA recorded: %s", exc)
        return None, None
    sha = head.stdout.strip()
    if head.returncode != 0 or not _SHA.fullmatch(sha):
        reason = head.stderr.strip().splitlines()[:1] or [f"exit {head.returncode}"]
        log.warning("no git SHA recorded: %s is not a git checkout (%s)", directory, reason[0])
        return None, None
    try:
        status = runner(["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.SubprocessError):
        return sha.lower(), None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return sha.lower(), dirty


def _run_git(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
    )


def default_directory(env: Mapping[str, str], stdout_link: str = "/proc/self/fd/1") -> str:
    """Return where the job's log is: the file on our stdout, else the submit dir, else cwd."""
    try:
        stdout = os.readlink(stdout_link)
    except OSError:
        stdout = ""
    if stdout.startswith("/") and os.path.isfile(stdout):
        return os.path.dirname(stdout)
    return env.get("SLURM_SUBMIT_DIR") or os.getcwd()


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace `path` with the manifest at once, so a reader never sees half of it; raises OSError."""
    handle, temporary = tempfile.mkstemp(prefix=".hpcsync-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(format_manifest(manifest))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `hpcsync manifest` to its parser."""
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter to record (repeatable)",
    )
    parser.add_argument("--seed", help="the run's random seed (an integer), stored in runs.seed")
    parser.add_argument(
        "--git-dir", metavar="DIR", help="record the git commit of the code checked out in DIR"
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="where to write (%%j job id expanded; default: hpcsync-%%j.run.json beside the log)",
    )


def manifest_command(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Write the job's manifest from `hpcsync manifest` arguments; return the exit code."""
    from hpcsync.gpu.sampler import output_path

    env = os.environ if env is None else env
    try:
        params = dict(parse_param(text) for text in args.param)
        seed = parse_seed(args.seed)
    except ManifestError as exc:
        print(f"hpcsync manifest: {exc}", file=sys.stderr)
        return exc.exit_code
    sha, dirty = git_state(args.git_dir) if args.git_dir else (None, None)
    manifest = Manifest(params=params, git_sha=sha, git_dirty=dirty, seed=seed)
    pattern = args.output or os.path.join(default_directory(env), DEFAULT_OUTPUT)
    path = output_path(pattern, env)
    try:
        write_manifest(path, manifest)
    except OSError as exc:
        print(f"hpcsync manifest: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    log.info(
        "run manifest %s: %d params, git %s, seed %s",
        path,
        len(params),
        sha[:12] if sha else "unknown",
        "none" if seed is None else seed,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m hpcsync.manifest`; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="hpcsync manifest", description="Write this job's run manifest: params, git SHA, seed."
    )
    add_manifest_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="hpcsync manifest: %(message)s")
    return manifest_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
