"""A dict that keeps only its `size` most recently used entries: the per-problem caches of a
process, scorer or server that lives for many requests (`sharpen serve`) stay bounded."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LRUDict(OrderedDict):
    """`OrderedDict` whose reads and writes mark an entry as used; past `size` entries the least
    recently used one is dropped. `size` must exceed the entries a caller needs at once (e.g. the
    searches in flight), or a live entry is dropped and looked up again."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        super().__init__()
        self.size = size

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
