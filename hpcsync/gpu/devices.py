"""Which GPUs belong to the job, and which NVML devices they are (pure).

Rules, in one place:

* **Which variable names the job's GPUs** (the first that is set and non-empty wins):

  1. `CUDA_VISIBLE_DEVICES` when every entry is a UUID (`GPU-...`, `MIG-...`). A UUID names one
     device on any node, under any cgroup; MIG instances can only be named this way.
  2. `SLURM_STEP_GPUS`: set by slurmstepd for the step on each node. Inside `srun` this is the
     right per-node list; `SLURM_JOB_GPUS` there may be the batch node's value, propagated.
  3. `SLURM_JOB_GPUS`: the job's GPUs on this node, as Slurm's real GPU indices.
  4. `CUDA_VISIBLE_DEVICES` with indices. Last, because under cgroup device constraints Slurm
     renumbers it from 0, while the `SLURM_*` variables keep the real indices.

  `NoDevFiles`, `-1` and empty entries mean no GPU.
* **Index to device.** Slurm's GPU index N names `/dev/nvidiaN`, so it is matched to the NVML device
  whose minor number is N; a UUID (or unique UUID prefix, as CUDA accepts) is matched by UUID.
  The bare NVML index is never used: it follows PCI order, not the device files.
* **`{i}`, a GPU's index within the job**: `node_rank * stride + position`, where
  `position` is the GPU's place in the variable above (Slurm lists indices in ascending order;
  a GPU NVML cannot open keeps its place, so `{i}` depends only on the environment);
  `node_rank` is this node's place in the expansion of `SLURM_JOB_NODELIST` (`SLURMD_NODENAME`
  looked up), else `SLURM_NODEID`, else 0; and `stride` is the per-node GPU count
  (`SLURM_GPUS_PER_NODE`), else the job's total (`SLURM_GPUS`, for `--gpus=N` which may spread
  unevenly, so indices never collide, at the price of gaps), else this node's count
  (`--gres=gpu:N` gives every node N GPUs). On one node, `{i}` is simply the GPU's place in the list.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NO_GPU_WORDS = frozenset({"", "nodevfiles", "-1", "none"})
UUID_PREFIXES = ("GPU-", "MIG-")


@dataclass(frozen=True, slots=True)
class GpuSelector:
    """One GPU of the job as the environment names it: a minor number or a UUID."""

    minor: int | None = None
    uuid: str | None = None

    def __str__(self) -> str:
        """Return the selector as the environment spelled it."""
        return self.uuid if self.uuid is not None else str(self.minor)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device NVML reports; `index` is NVML's own order, kept for logs only."""

    index: int | None
    minor: int | None
    uuid: str
    name: str


@dataclass(frozen=True, slots=True)
class MatchedGpu:
    """A job GPU found in NVML, with its index `i` within the job."""

    i: int
    selector: GpuSelector
    device: DeviceInfo


def gpu_variable(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Return (name, value) of the variable that names the job's GPUs, or None for a CPU-only job."""
    cuda = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    cuda_items = _items(cuda)
    if cuda_items and all(item.startswith(UUID_PREFIXES) for item in cuda_items):
        return "CUDA_VISIBLE_DEVICES", cuda
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = env.get(name, "").strip()
        if _items(value):
            return name, value
    return None


def parse_gpu_list(text: str) -> list[GpuSelector]:
    """Return selectors for a list like `0,2-3` or `GPU-ab12,MIG-cd34`; unreadable entries are skipped."""
    selectors: list[GpuSelector] = []
    for item in _items(text):
        if item.startswith(UUID_PREFIXES):
            selectors.append(GpuSelector(uuid=item))
        elif item.isdigit():
            selectors.append(GpuSelector(minor=int(item)))
        elif (found := re.fullmatch(r"(\d+)-(\d+)", item)) and int(found[1]) <= int(found[2]):
            selectors.extend(GpuSelector(minor=n) for n in range(int(found[1]), int(found[2]) + 1))
        else:
            logger.warning("ignoring GPU entry %r: neither an index nor a UUID", item)
    unique: list[GpuSelector] = []
    for selector in selectors:
        if selector not in unique:
            unique.append(selector)
    return unique


def gpu_selectors_from_env(env: Mapping[str, str]) -> list[GpuSelector]:
    """Return the job's GPUs on this node, in job order, per the precedence in this module's doc."""
    variable = gpu_variable(env)
    return parse_gpu_list(variable[1]) if variable else []


def expand_hostlist(text: str) -> list[str]:
    """Return the host names of a Slurm host list like `gpu[01-03,5],login1`, in order."""
    hosts: list[str] = []
    for part in _split_top_level(text):
        pieces = re.split(r"(\[[^\]]*\])", part)
        choices: list[list[str]] = []
        for piece in pieces:
            if piece.startswith("[") and piece.endswith("]"):
                choices.append(_expand_range_list(piece[1:-1]))
            elif piece:
                choices.append([piece])
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def node_rank(env: Mapping[str, str]) -> int:
    """Return this node's place among the job's nodes (0 when it cannot be told)."""
    nodes = expand_hostlist(env.get("SLURM_JOB_NODELIST", "") or env.get("SLURM_NODELIST", ""))
    name = env.get("SLURMD_NODENAME", "")
    if name and name in nodes:
        return nodes.index(name)
    node_id = env.get("SLURM_NODEID", "").strip()
    return int(node_id) if node_id.isdigit() else 0


def first_gpu_index(env: Mapping[str, str], local_count: int) -> int:
    """Return `{i}` of this node's first GPU: node rank times the per-node stride."""
    rank = node_rank(env)
    if rank == 0:
        return 0
    stride = (
        _gpu_count(env.get("SLURM_GPUS_PER_NODE", ""))
        or _gpu_count(env.get("SLURM_GPUS", ""))
        or local_count
    )
    return rank * stride


def match_devices(
    selectors: Sequence[GpuSelector], devices: Sequence[DeviceInfo], first_index: int = 0
) -> list[MatchedGpu]:
    """Return the devices the selectors name, `i` = first_index + the selector's position.

    Matches by minor number or UUID, never by NVML index. A selector with no device is logged and
    keeps its `i`, so indices never shift; a device named twice is sampled once.
    """
    matched: list[MatchedGpu] = []
    taken: set[str] = set()
    for position, selector in enumerate(selectors):
        device = _find(selector, devices)
        if device is None:
            logger.warning(
                "GPU %s of the job is not among the devices NVML can open; skipping it", selector
            )
            continue
        if device.uuid in taken:
            logger.warning("GPU %s names %s a second time; sampling it once", selector, device.uuid)
            continue
        taken.add(device.uuid)
        matched.append(MatchedGpu(i=first_index + position, selector=selector, device=device))
    return matched


def _find(selector: GpuSelector, devices: Sequence[DeviceInfo]) -> DeviceInfo | None:
    """Return the one device the selector names, or None when none or several match."""
    if selector.minor is not None:
        found = [device for device in devices if device.minor == selector.minor]
    else:
        uuid = selector.uuid or ""
        found = [device for device in devices if device.uuid == uuid]
        if not found:
            found = [device for device in devices if device.uuid.startswith(uuid)]
    if len(found) > 1:
        logger.warning("GPU %s matches %d devices; skipping it", selector, len(found))
        return None
    return found[0] if found else None


def _items(text: str) -> list[str]:
    """Return the comma-separated entries of a GPU list, without the words meaning no GPU."""
    items = [item.strip() for item in text.split(",")]
    return [item for item in items if item.lower() not in NO_GPU_WORDS]


def _split_top_level(text: str) -> list[str]:
    """Return the comma-separated parts of a host list, keeping commas inside brackets."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text.strip():
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _expand_range_list(text: str) -> list[str]:
    """Return the values of a bracket body like `01-03,5`, keeping zero padding."""
    values: list[str] = []
    for item in text.split(","):
        low, _, high = item.strip().partition("-")
        if not high:
            values.append(low)
            continue
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def _gpu_count(text: str) -> int:
    """Return the GPU count in `2`, `a100:2` or `gpu:a100:1,gpu:v100:1`; 0 if there is none."""
    total = 0
    for item in text.split(","):
        last = item.strip().rsplit(":", 1)[-1]
        if last.isdigit():
            total += int(last)
    return total
