"""Small in-process caches: an LRU for immutable things, a TTL map for tag lists."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Bounded by entry count, and by total weight (bytes, say) when ``max_weight`` is set; for
    content-addressed values, which never go stale."""

    def __init__(self, maxsize: int, max_weight: int | None = None) -> None:
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.maxsize = maxsize
        self.max_weight = max_weight
        self.weight = 0

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, weight: int = 1) -> None:
        if self.max_weight is not None and weight > self.max_weight:
            return  # larger than the whole cache: not kept
        self.pop(key)
        self._data[key] = (value, weight)
        self.weight += weight
        while len(self._data) > self.maxsize or (self.max_weight is not None and self.weight > self.max_weight):
            _, (_, w) = self._data.popitem(last=False)
            self.weight -= w

    def pop(self, key: K) -> V | None:
        item = self._data.pop(key, None)
        if item is None:
            return None
        self.weight -= item[1]
        return item[0]

    def __len__(self) -> int:
        return len(self._data)


class TTLCache(Generic[K, V]):
    """Entries live ``ttl`` seconds, and are dropped on our own writes."""

    def __init__(self, ttl: float, maxsize: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.ttl = ttl
        self.maxsize = maxsize
        self._clock = clock

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < self._clock():
            del self._data[key]
            return None
        return item[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        self._data[key] = (self._clock() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def fresh(self, key: K) -> bool:
        """Whether key holds a live entry (whose value may itself be None)."""
        item = self._data.get(key)
        return item is not None and item[0] >= self._clock()

    def drop_where(self, pred: Callable[[K], bool]) -> None:
        for key in [k for k in self._data if pred(k)]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()
