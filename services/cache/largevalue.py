"""Values larger than a memcached item: split into chunks behind a manifest.

memcached refuses an item above its ``-I`` item size (1 MiB by default). A payload longer
than `LargeValues.chunk_bytes` (the pool's `item_size_max_bytes` minus room for the key and
item header) is stored as:

- chunks ``lv:<hash of the item's key>:<version>:<i>``, each at most `chunk_bytes`, spread
  over the pool's servers by the ring like any key, written first;
- then the manifest under the item's own key, with the item's flags plus
  `codec.FLAG_LARGE`: magic, total size, chunk count, chunk size, the 64-bit random version
  that names the chunks, and a CRC-32 of the whole payload. (The version, not the checksum,
  keeps writers apart; CRC-32 catches damaged or truncated chunks at twice the speed of a
  cryptographic hash, which dominated the cost of a large read.)

Because every write picks a fresh version and writes its manifest only after all its chunks
were stored, a reader that found a manifest reads only chunks of that one write: concurrent
writers of one key never mix, and the last manifest stored wins. A reader checks the total
size and the checksum; a chunk that is missing (evicted, expired, or on a server that is
down or failed) makes the read a miss, never partial bytes; a checksum that does not match
is ServiceError 1002 (CHECKSUM_MISMATCH).

Chunks get the item's TTL. Overwritten or deleted values leave their chunks behind until
memcached's LRU or the TTL removes them (deleting them would turn concurrent reads of the old
manifest into misses). A conditional store (add/replace/cas) whose manifest is refused
deletes the chunks it wrote. Requests go out in rounds of `CHUNKS_PER_ROUND` chunks (one
pipelined request per server per round, servers in parallel), which bounds the bytes in
flight per server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass

from services.cache import codec
from services.cache.client import Cluster, Key
from services.cache.server import ValueTuple
from services.core import errors
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

#: memcached's default item size (-I), bytes.
DEFAULT_ITEM_SIZE_MAX_BYTES = 1024 * 1024
#: Largest value split into chunks, bytes.
DEFAULT_MAX_VALUE_BYTES = 64 * 1024 * 1024
#: Room left in an item for the key, the item header and CRLF (memcached needs ~60 bytes
#: plus the key; the rest is slack for memcached builds with larger headers), bytes.
CHUNK_HEADROOM_BYTES = 1024
#: Chunks sent or read per round.
CHUNKS_PER_ROUND = 16
MANIFEST_MAGIC = b"GLV1"
#: magic, total size, chunk count, chunk size, version, CRC-32.
_MANIFEST = struct.Struct(">4sQIIQI")
CHECKSUM_MISMATCH = 1002


@dataclass
class LargeStats:
    """Counts for getCounters."""

    written: int = 0
    read: int = 0
    missing: int = 0
    checksum_failures: int = 0


def checksum(data: bytes | memoryview, running: int = 0) -> int:
    """CRC-32 of `data`, continuing from `running` (the CRC of what came before)."""
    return zlib.crc32(data, running)


@dataclass(frozen=True)
class Manifest:
    size: int
    count: int
    chunk_bytes: int
    version: int
    digest: int

    def pack(self) -> bytes:
        return _MANIFEST.pack(MANIFEST_MAGIC, self.size, self.count, self.chunk_bytes,
                              self.version, self.digest)

    @classmethod
    def unpack(cls, data: bytes, key: str) -> Manifest:
        """ServiceError 1002 when `data` is not a consistent manifest."""
        if len(data) != _MANIFEST.size or data[:4] != MANIFEST_MAGIC:
            raise _mismatch(f"item {key!r} is flagged large but holds no manifest", key)
        _, size, count, chunk_bytes, version, digest = _MANIFEST.unpack(data)
        if chunk_bytes < 1 or count != -(-size // chunk_bytes):
            raise _mismatch(f"manifest of {key!r} is inconsistent", key)
        return cls(size, count, chunk_bytes, version, digest)

    def chunk_names(self, wire_key: bytes) -> list[str]:
        base = hashlib.blake2b(wire_key, digest_size=8).hexdigest()
        return [f"lv:{base}:{self.version:016x}:{i}" for i in range(self.count)]


def _mismatch(message: str, key: str) -> ServiceError:
    return errors.service_error(CHECKSUM_MISMATCH, message, retryable=False,
                                details={"key": key})


class LargeValues:
    """Splitting and joining for one pool (see the module docstring)."""

    def __init__(self, item_size_max_bytes: int = DEFAULT_ITEM_SIZE_MAX_BYTES,
                 max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self.chunk_bytes = item_size_max_bytes - CHUNK_HEADROOM_BYTES
        self.max_value_bytes = max_value_bytes
        self.stats = LargeStats()

    def check_size(self, size: int, key: str) -> None:
        """ServiceError(413) when a value of `size` bytes is over the configured maximum."""
        if size > self.max_value_bytes:
            raise errors.too_large(
                f"value of {key!r} is {size} bytes; the pool's maximum is "
                f"{self.max_value_bytes}", key=key, size=size, limit=self.max_value_bytes,
            )

    def needs_split(self, payload: bytes) -> bool:
        return len(payload) > self.chunk_bytes

    def write(self, cluster: Cluster, key: Key, verb: bytes, payload: bytes, flags: int,
              ttl: int, deadline: float, cas: int = 0) -> bytes:
        """Stores chunks, then the manifest with `verb` (set/add/replace/cas); the manifest's
        reply word. A chunk that could not be stored raises its ServiceError and no
        manifest is written (the previous value, if any, stays readable)."""
        self.check_size(len(payload), key.name)
        view = memoryview(payload)
        size = self.chunk_bytes
        manifest = Manifest(len(payload), -(-len(payload) // size), size,
                            int.from_bytes(os.urandom(8), "big"), checksum(view))
        names = manifest.chunk_names(key.wire)
        keys = [cluster.resolve(n) for n in names]
        for start in range(0, len(keys), CHUNKS_PER_ROUND):
            batch = [(k, bytes(view[i * size:(i + 1) * size]), 0)
                     for i, k in enumerate(keys[start:start + CHUNKS_PER_ROUND], start)]
            replies = cluster.store_many(batch, ttl, b"set", deadline)
            for k, _, _ in batch:
                reply = replies[k.wire]
                if isinstance(reply, ServiceError):
                    raise reply
                if reply != b"STORED":
                    raise errors.bad_gateway(f"chunk {k.name} of {key.name!r} not stored: "
                                             f"{reply[:80]!r}", key=key.name)
        reply = cluster.store(verb, key, manifest.pack(), flags | codec.FLAG_LARGE, ttl,
                              deadline, cas)
        if reply != b"STORED":
            try:
                cluster.delete_many(keys, deadline)
            except ServiceError as e:
                log.info("chunks of refused %r not deleted: %s", key.name, e.message)
        else:
            self.stats.written += 1
        return reply

    def read(self, cluster: Cluster, key: Key, manifest_bytes: bytes, deadline: float,
             command: bytes = b"gets") -> bytes | None:
        """The payload a manifest describes, or None when a chunk is missing or its server
        failed (a miss). `command` ``gats <ttl>`` also touches the chunks. 1002 on a
        malformed manifest or a checksum that does not match."""
        manifest = Manifest.unpack(manifest_bytes, key.name)
        keys = [cluster.resolve(n) for n in manifest.chunk_names(key.wire)]
        parts: list[bytes] = []
        digest = 0
        for start in range(0, len(keys), CHUNKS_PER_ROUND):
            batch = keys[start:start + CHUNKS_PER_ROUND]
            found, failed = cluster.fetch_many(batch, deadline, command)
            for k in batch:
                hit: ValueTuple | None = found.get(k.wire)
                if hit is None:
                    self.stats.missing += 1
                    why = "its server failed" if k.server in failed else "it is gone"
                    log.info("large value %r is a miss: chunk %s %s", key.name, k.name, why)
                    return None
                parts.append(hit[1])
                digest = checksum(hit[1], digest)
        value = b"".join(parts)
        if len(value) != manifest.size or digest != manifest.digest:
            self.stats.checksum_failures += 1
            raise _mismatch(f"large value {key.name!r} failed its checksum", key.name)
        self.stats.read += 1
        return value
