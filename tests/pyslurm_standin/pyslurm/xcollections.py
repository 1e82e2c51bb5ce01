"""pyslurm.xcollections: the cluster-keyed collection every pyslurm `load()` returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class MultiClusterMap:
    """`{cluster: {id: item}}`; iterating gives ids, `.values()` gives items of every cluster."""

    def __init__(self, data: dict[str, dict[int, Any]] | None = None) -> None:
        self.data: dict[str, dict[int, Any]] = data or {}

    def add(self, cluster: str, key: int, item: Any) -> None:
        """Put one item under its cluster."""
        self.data.setdefault(cluster, {})[key] = item

    def values(self) -> list[Any]:
        """Return every item of every cluster."""
        return [item for items in self.data.values() for item in items.values()]

    def keys(self) -> list[int]:
        """Return every id of every cluster."""
        return [key for items in self.data.values() for key in items]

    def clusters(self) -> list[str]:
        """Return the cluster names."""
        return list(self.data)

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the item with this id (or `(cluster, id)`), else default."""
        cluster, job_id = key if isinstance(key, tuple) else (None, key)
        for name, items in self.data.items():
            if cluster in (None, name) and job_id in items:
                return items[job_id]
        return default

    def __getitem__(self, key: Any) -> Any:
        if key in self.data:
            return self.data[key]
        item = self.get(key)
        if item is None:
            raise KeyError(key)
        return item

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def __len__(self) -> int:
        return sum(len(items) for items in self.data.values())

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __bool__(self) -> bool:
        return bool(self.data)
