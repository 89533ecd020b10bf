"""How items are stored: the layers glammp adds over memcached's flags and payload.

`ItemStore` writes and reads values for the handler: pecl's encoding (`codec`), values larger
than an item split behind a manifest (`largevalue`), the read-through envelope
(`codec.pack_envelope`) and the in-process L1 that every write through it invalidates
(`hotcache`). It is the `readthrough.Storage` that get_or_compute and the warm-up route use.
"""

from __future__ import annotations

import struct
import time

from thrift.protocol.fastbinary import encode_binary

from glammp.cache.ttypes import Item, ValueType, WriteOptions
from services.cache import codec
from services.cache.client import MAX_RELATIVE_TTL_S, Cluster, Key
from services.cache.config import CacheConfig
from services.cache.hotcache import HotCache
from services.cache.largevalue import LargeValues
from services.cache.readthrough import Stored
from services.cache.server import ValueTuple
from services.core import errors

_I64 = 2**64

#: An Item's fields as a tuple, in field order (key, found, value, flags, type, user_flags, cas).
ItemRow = tuple[str, bool, bytes, int, int, int, int]

_I32 = struct.Struct(">i")
# Binary protocol, each field as (type, id, value): 1 (string key), its length; 2 (bool found),
# 3 (binary value), its length; 4 (i64 flags), 5 (i32 type), 6 (i32 user_flags), 7 (i64 cas),
# then the struct's stop byte.
_ITEM_HEAD = struct.Struct(">bhi")
_ITEM_MIDDLE = struct.Struct(">bh?bhi")
_ITEM_TAIL = struct.Struct(">bhqbhibhibhqb")
_ITEM_SPEC = [Item, Item.thrift_spec]
_LIST_OF_STRUCTS = bytes([12])  # TType.STRUCT


def encode_item_list(rows: list[Item | ItemRow]) -> bytes:
    """A list<Item> in the binary protocol, as Thrift's own encoder writes it: the element
    type, the count and each struct (rows as tuples, without building Item objects)."""
    head = _ITEM_HEAD.pack
    middle = _ITEM_MIDDLE.pack
    tail = _ITEM_TAIL.pack
    out = [_LIST_OF_STRUCTS, _I32.pack(len(rows))]
    extend = out.extend
    for row in rows:
        if type(row) is Item:
            out.append(encode_binary(row, _ITEM_SPEC))
            continue
        key, found, value, flags, vtype, user_flags, cas = row  # type: ignore[misc]
        raw = key.encode()
        extend((head(11, 1, len(raw)), raw, middle(2, 2, found, 11, 3, len(value)), value,
                tail(10, 4, flags, 8, 5, vtype, 8, 6, user_flags, 10, 7, cas, 0)))
    return b"".join(out)


_STORE_RESULTS = ("STORED", "NOT_STORED", "EXISTS", "NOT_FOUND")


class ItemStore:
    """Per-pool large-value splitting and L1 copies, and the item format."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.large = {name: LargeValues(p.item_size_max_bytes, p.max_value_bytes)
                      for name, p in config.pools.items()}
        self.hot: dict[str, HotCache[Stored | ValueTuple]] = {
            name: HotCache(p.hot_prefixes, p.hot_ttl_ms / 1000, p.hot_max_items)
            for name, p in config.pools.items()
        }

    @staticmethod
    def item(key: str, found: Stored | ValueTuple | None, decompress: bool) -> Item:
        """The Item answered for `found` (None: a miss)."""
        if found is None:
            return Item(key, False, b"", 0, ValueType.STRING, 0, 0)
        flags, payload, cas = found[0], found[1], found[2]
        if cas >= 2**63:
            cas -= _I64
        if not flags:
            return Item(key, True, payload, 0, ValueType.STRING, 0, cas)
        value = codec.decode(payload, flags, key) if decompress else payload
        return Item(key, True, value, flags, codec.value_type(flags), codec.user_flags_of(flags),
                    cas)

    def load_stored(self, cluster: Cluster, key: Key, flags: int, payload: bytes, cas: int,
                    deadline: float, command: bytes = b"gets") -> Stored | None:
        """An item as read → its value as stored: a large value's chunks joined (None when
        one is missing: a miss), the read-through envelope opened, internal flag bits
        removed. `command` reads the chunks (``gats <ttl>`` touches them too)."""
        if not flags & codec.INTERNAL_FLAGS:
            return Stored(flags, payload, cas)
        if flags & codec.FLAG_LARGE:
            joined = self.large[cluster.name].read(cluster, key, payload, deadline, command)
            if joined is None:
                return None
            payload = joined
        delta_ms = expiry_ms = 0
        if flags & codec.FLAG_ENVELOPE:
            payload, delta_ms, expiry_ms = codec.unpack_envelope(payload, key.name)
        return Stored(flags & ~codec.INTERNAL_FLAGS, payload, cas, delta_ms, expiry_ms)

    def read(self, cluster: Cluster, key: Key, found: ValueTuple | None, deadline: float,
              command: bytes = b"gets") -> Stored | None:
        if found is None:
            return None
        return self.load_stored(cluster, key, found[0], found[1], found[2], deadline, command)

    def write(self, verb: bytes, cluster: Cluster, key: Key, payload: bytes, flags: int,
               ttl: int, deadline: float, cas: int = 0) -> bytes:
        """One store, split into chunks behind a manifest when the payload is too big for
        one item; the reply word."""
        self.hot[cluster.name].drop((key.wire,))
        large = self.large[cluster.name]
        if large.needs_split(payload):
            return large.write(cluster, key, verb, payload, flags, ttl, deadline, cas)
        return cluster.store(verb, key, payload, flags, ttl, deadline, cas)

    def store_computed(self, cluster: Cluster, key: Key, value: bytes, delta_ms: int,
                       ttl: int, deadline: float) -> Stored:
        """Stores a loader's value behind the envelope XFetch reads (get_or_compute)."""
        self.large[cluster.name].check_size(len(value), key.name)
        payload, flags = self.encode(cluster, value, None)
        if ttl == 0:
            expiry_ms = 0
        elif ttl > MAX_RELATIVE_TTL_S:
            expiry_ms = ttl * 1000
        else:
            expiry_ms = int(time.time() * 1000) + ttl * 1000
        wrapped = codec.pack_envelope(payload, delta_ms, expiry_ms)
        reply = self.write(b"set", cluster, key, wrapped, flags | codec.FLAG_ENVELOPE, ttl,
                            deadline)
        check_stored(reply, key)
        return Stored(flags, payload, 0, delta_ms, expiry_ms)

    def encode(self, cluster: Cluster, value: bytes, opts: WriteOptions | None,
               vtype: int | None = None, user_flags: int | None = None) -> tuple[bytes, int]:
        """(payload, flags) of a value as the pool writes it (its compression defaults);
        400 for a value that is not of its type."""
        pool = self.config.pools[cluster.name]
        compress = pool.compression if opts is None or opts.compress is None else opts.compress
        if vtype is None:
            vtype = ValueType.STRING if opts is None or opts.type is None else opts.type
        if user_flags is None:
            user_flags = 0 if opts is None or opts.user_flags is None else opts.user_flags
        return codec.encode(
            as_bytes(value), vtype, user_flags, compress, pool.compression_type,
            pool.compression_threshold,
        )



def as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def check_stored(reply: bytes, key: Key) -> None:
    """502 unless `reply` is a store reply word."""
    if reply.decode("latin-1") not in _STORE_RESULTS:
        raise errors.bad_gateway(
            f"unexpected store reply {reply[:80]!r} from {key.server.address}", key=key.name)
