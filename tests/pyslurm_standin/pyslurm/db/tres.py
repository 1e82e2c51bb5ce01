"""pyslurm.db.tres: trackable resources and GPUs."""

from __future__ import annotations

from typing import Any

from pyslurm.utils import dehumanize, tres_dict


class TrackableResource:
    """One TRES and its count."""

    def __init__(self, tres_type: str, count: int, name: str | None = None) -> None:
        self.type = tres_type
        self.name = name
        self.count = int(count)


class GPU:
    """A GPU TRES: count and optional type (`a100`)."""

    def __init__(self, count: int, gpu_type: str | None = None, tres_id: int | None = None) -> None:
        self.count = int(count)
        self.type = gpu_type
        self.id = tres_id

    @property
    def name(self) -> str:
        return f"gpu:{self.type}" if self.type else "gpu"


class TrackableResources:
    """A parsed TRES string: cpu, mem, node, billing, gres (GPUs as GPU objects)."""

    def __init__(self) -> None:
        self.cpu: TrackableResource | None = None
        self.mem: TrackableResource | None = None
        self.node: TrackableResource | None = None
        self.billing: TrackableResource | None = None
        self.gres: dict[str, Any] = {}
        self.other: dict[str, Any] = {}

    @staticmethod
    def from_str(tres_str: str | None, on_empty: Any = None) -> Any:
        """Return the parsed TRES, or on_empty for an empty string."""
        values = tres_dict(tres_str)
        if not values:
            return on_empty
        out = TrackableResources()
        for key, value in values.items():
            typ, _, name = key.partition("/")
            count = dehumanize(value) if typ == "mem" else int(value)
            if typ == "gres":
                gpu_type = name.split(":", 1)[1] if ":" in name else None
                if name == "gpu" or name.startswith("gpu:"):
                    gpu = GPU(count, gpu_type)
                    out.gres[gpu.name] = gpu
                else:
                    out.gres[name] = TrackableResource(typ, count, name)
            elif typ in ("cpu", "mem", "node", "billing"):
                setattr(out, typ, TrackableResource(typ, count))
            else:
                out.other[key] = TrackableResource(typ, count, name or None)
        return out
