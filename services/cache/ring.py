"""Server selection that agrees with libmemcached (and so with PHP's pecl/memcached).

Three distributions, named as in the pool config:

- ``ketama`` — libmemcached's weighted continuum (PHP ``OPT_LIBKETAMA_COMPATIBLE=true``): key
  hash MD5, 160 points per server scaled by weight, computed in C ``float`` precision.
- ``consistent`` — ``DISTRIBUTION_CONSISTENT`` without ``OPT_LIBKETAMA_COMPATIBLE``: 100 points
  per server, every label and key hashed with one-at-a-time. As in libmemcached, a server with
  weight > 1 switches the continuum to the weighted (MD5-point) layout; keys still hash with
  one-at-a-time.
- ``modula`` — PHP's default: ``one_at_a_time(key) % number_of_servers``.

A `Ring` is immutable: it is built over the *live* servers of a pool, and a pool that ejects a
failed server builds a new ring without it, which moves exactly that server's keys the way
libmemcached's ``REMOVE_FAILED_SERVERS`` does (modula is never rebuilt: libmemcached does not
remap modula either).

The facts this module encodes (label ``host-i`` for port 11211, else ``host:port-i``; the
float32 point count; the (value, index) sort; lower-bound lookup with wrap; the one-server
shortcut; one-at-a-time reading bytes as signed ``char``) are described, with the agreement
measurements against PHP, in shared/reference/memcached-interop.md, part B.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

DISTRIBUTIONS = ("ketama", "consistent", "modula")

#: libmemcached's MEMCACHED_POINTS_PER_SERVER_KETAMA (weighted continuum).
KETAMA_POINTS_PER_SERVER = 160
#: libmemcached's MEMCACHED_POINTS_PER_SERVER (unweighted consistent continuum).
CONSISTENT_POINTS_PER_SERVER = 100
#: memcached's default port: libmemcached leaves it out of the point labels.
DEFAULT_PORT = 11211

_F32 = struct.Struct("<f")
_WORDS = struct.Struct("<4I")
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Node:
    """One memcached server as written in the config: the host string is used as given
    (``localhost`` and ``127.0.0.1`` label differently, exactly as in libmemcached)."""

    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, spec: str) -> Node:
        """``host:port`` or ``host:port:weight``; ValueError naming the problem otherwise.
        A weight of 0 counts as 1, as libmemcached stores it."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"server {spec!r} is not host:port or host:port:weight")
        try:
            port = int(parts[1])
            weight = int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            raise ValueError(f"server {spec!r}: port and weight must be integers") from None
        if not 0 < port < 65536:
            raise ValueError(f"server {spec!r}: port out of range")
        if weight < 0:
            raise ValueError(f"server {spec!r}: weight must be >= 0")
        return cls(parts[0], port, max(weight, 1))


def _f32(x: float) -> float:
    """Rounds to IEEE single precision, as a C ``float`` variable holds it."""
    return float(_F32.unpack(_F32.pack(x))[0])


def md5_hash(data: bytes) -> int:
    """libhashkit's MD5 key hash: the little-endian uint32 of the digest's first 4 bytes."""
    return int.from_bytes(hashlib.md5(data).digest()[:4], "little")


def one_at_a_time(data: bytes) -> int:
    """libhashkit's one-at-a-time hash. Bytes are read through a signed ``char``, so a byte
    >= 0x80 is sign-extended before it is added; other ports that skip this disagree with
    libmemcached on every non-ASCII key."""
    value = 0
    for b in data:
        value = (value + (b | 0xFFFFFF00 if b >= 0x80 else b)) & _MASK32
        value = (value + (value << 10)) & _MASK32
        value ^= value >> 6
    value = (value + (value << 3)) & _MASK32
    value ^= value >> 11
    value = (value + (value << 15)) & _MASK32
    return value


def weighted_points(weight: int, total_weight: int, live: int) -> int:
    """Points for one server on the weighted continuum, computed like libmemcached:
    ``floor((float)w/(float)total * 160 / 4 * (float)live + 1e-10) * 4`` where every step
    before the addition is a C ``float`` (weights 45/46/29 give 180/184/112 points; double
    precision would give 116 for the last)."""
    pct = _f32(_f32(float(weight)) / _f32(float(total_weight)))
    scaled = _f32(_f32(_f32(pct * KETAMA_POINTS_PER_SERVER) / 4) * _f32(float(live)))
    return int(math.floor(scaled + 0.0000000001)) * 4


def _label(node: Node, i: int) -> bytes:
    if node.port == DEFAULT_PORT:
        return f"{node.host}-{i}".encode()
    return f"{node.host}:{node.port}-{i}".encode()


class Ring:
    """Maps keys to one of `nodes` (the servers of a pool, in config order).

    `live` are the indexes taking part (all of them unless some were ejected). `index_for`
    returns an index into `nodes`. Build cost: about 1 ms for 10 servers; lookups are one hash
    plus a binary search.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        distribution: str = "ketama",
        live: Sequence[int] | None = None,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution {distribution!r} is not one of {DISTRIBUTIONS}")
        if not nodes:
            raise ValueError("a ring needs at least one server")
        self.nodes = tuple(nodes)
        self.distribution = distribution
        self.live = tuple(sorted(set(range(len(nodes)) if live is None else live)))
        self._key_hash = md5_hash if distribution == "ketama" else one_at_a_time
        self._values: list[int] = []
        self._owners: list[int] = []
        if distribution != "modula":
            self._build_continuum()

    def _build_continuum(self) -> None:
        weighted = self.distribution == "ketama" or any(n.weight > 1 for n in self.nodes)
        total = sum(self.nodes[i].weight for i in self.live)
        points: list[tuple[int, int]] = []
        for index in self.live:
            node = self.nodes[index]
            if weighted:
                count = weighted_points(node.weight, total, len(self.live)) // 4
                for i in range(count):
                    words = _WORDS.unpack(hashlib.md5(_label(node, i)).digest())
                    points.extend((w, index) for w in words)
            else:
                for i in range(CONSISTENT_POINTS_PER_SERVER):
                    points.append((one_at_a_time(_label(node, i)), index))
        points.sort()
        self._values = [v for v, _ in points]
        self._owners = [i for _, i in points]

    def key_hash(self, key: bytes) -> int:
        """The hash libmemcached computes for `key` under this distribution."""
        return self._key_hash(key)

    def index_for(self, key: bytes) -> int:
        """Index into `nodes` of the server owning `key` (the bytes that are hashed: the
        item key, or the server key, with the prefix only when the pool hashes it).
        ValueError when no server is live."""
        if len(self.nodes) == 1:
            return 0
        if not self.live:
            raise ValueError("no live server in the ring")
        h = self._key_hash(key)
        if self.distribution == "modula":
            return h % len(self.nodes)
        pos = bisect.bisect_left(self._values, h)
        if pos == len(self._values):
            pos = 0
        return self._owners[pos]

    def node_for(self, key: bytes) -> Node:
        return self.nodes[self.index_for(key)]

    def point_counts(self) -> dict[str, int]:
        """Continuum points per server address (empty for modula); for diagnostics and tests."""
        counts: dict[str, int] = {}
        for owner in self._owners:
            addr = self.nodes[owner].address
            counts[addr] = counts.get(addr, 0) + 1
        return counts
