"""A least-recently-used store whose values' total size stays within a byte budget.

Used for decoded video frames (:class:`~musetalk_lib.video_io.VideoReader`) and
for blend regions (:class:`~musetalk_lib.avatar.BlendRegions`): when a new
value would pass ``max_bytes``, the values used longest ago go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["DEFAULT_CACHE_BYTES", "BoundedCache"]

DEFAULT_CACHE_BYTES = 512 * 2**20  # about 1400 frames of 350x350, 85 frames of 1920x1080 RGB

Value = TypeVar("Value")


def _nbytes(value) -> int:
    return value.nbytes


class BoundedCache(Generic[Value]):
    """Values by key, evicted least recently used first to stay within ``max_bytes``.

    ``size_of`` gives a value's size in bytes (default: its ``nbytes``, for numpy arrays).
    """

    def __init__(self, max_bytes: int, size_of: Callable[[Value], int] = _nbytes):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.size_of = size_of
        self.nbytes = 0
        self._values: OrderedDict[Hashable, Value] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def capacity(self, value_bytes: int) -> int:
        """How many values of ``value_bytes`` each fit in the budget."""
        return self.max_bytes // max(1, value_bytes)

    def get(self, key: Hashable) -> Value | None:
        """The stored value (now the most recently used), or ``None``."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Value) -> Value:
        """Store ``value`` as the most recently used, evicting old values past the budget; returns it.

        A value larger than the whole budget is not stored (but still returned).
        """
        size = self.size_of(value)
        if size > self.max_bytes:
            return value
        previous = self._values.pop(key, None)
        if previous is not None:
            self.nbytes -= self.size_of(previous)
        self._values[key] = value
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, evicted = self._values.popitem(last=False)
            self.nbytes -= self.size_of(evicted)
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """The stored value of ``key``, or ``compute()`` stored as the most recently used."""
        value = self.get(key)
        return value if value is not None else self.put(key, compute())
