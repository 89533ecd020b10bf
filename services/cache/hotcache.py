"""A small in-process cache (L1) in front of memcached for keys marked hot.

A pool's ``hot_prefixes`` name the keys worth keeping in process memory: a `get` or
`get_multi` of such a key is answered from here while its copy is younger than
``hot_ttl_ms``, and otherwise read from memcached and kept (large values only through
`get`). At most ``hot_max_items`` copies are kept; the least recently used one goes first.

Consistency: every write through this service instance (store, append, delete, counters,
oneway writes, flush) drops the copies it touches before it is sent, so a caller reading
through the instance it wrote through sees its write. A write through another instance or
straight to memcached is seen here only after at most ``hot_ttl_ms``: that staleness bound is
the price of the L1, which is why it is opt-in per prefix and its TTL short. Misses are not
cached. A read that was in flight while a write went through this instance does not keep
what it read. The copies are keyed by the key sent to memcached, so a namespace invalidation
(a new version, a new key) is seen at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

#: Longest a copy is served, ms.
DEFAULT_HOT_TTL_MS = 1000
#: Most copies kept per pool.
DEFAULT_HOT_MAX_ITEMS = 10_000

V = TypeVar("V")


class HotCache(Generic[V]):
    """The L1 copies of one pool: `prefixes` (caller key prefixes), TTL in seconds, bound."""

    def __init__(self, prefixes: Sequence[str], ttl_s: float, max_items: int) -> None:
        self.prefixes = tuple(prefixes)
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        #: Moves on with every write: a read that started before a write must not keep the
        #: (possibly older) value it got (see `put`).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._items)

    def wanted(self, name: str) -> bool:
        """Whether the caller's key `name` is one to keep (an empty prefix list: none)."""
        return bool(self.prefixes) and name.startswith(self.prefixes)

    def get(self, wire: bytes) -> V | None:
        entry = self._items.get(wire)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] <= time.monotonic():
            del self._items[wire]
            self.misses += 1
            return None
        self._items.move_to_end(wire)
        self.hits += 1
        return entry[1]

    def put(self, wire: bytes, value: V, epoch: int) -> None:
        """Keeps `value`, read from memcached after `epoch` was taken, unless a write went
        through this instance meanwhile (it may have overtaken the read)."""
        if epoch != self.epoch:
            return
        self._items[wire] = (time.monotonic() + self.ttl_s, value)
        self._items.move_to_end(wire)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def drop(self, wires: Iterable[bytes]) -> None:
        self.epoch += 1
        if self._items:
            for wire in wires:
                self._items.pop(wire, None)

    def counters(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "items": len(self._items)}

    def clear(self) -> None:
        self.epoch += 1
        self._items.clear()
