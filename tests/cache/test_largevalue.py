"""Values above memcached's item size against real memcached: byte-exact round trips, no torn
reads under concurrent writers, and a miss (never wrong bytes) when a chunk's server dies."""

from __future__ import annotations

import random
from collections.abc import Callable

import gevent
import gevent.event
import pytest

from glammp.cache.ttypes import Entry, ReadOptions, StoreResult, WriteOptions
from services.cache.client import Cluster
from services.cache.largevalue import Manifest
from services.cache.service import CacheHandler
from services.core.children import Child
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler, raw_command

MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def manifest_of(h: CacheHandler, key: str) -> tuple[Cluster, Manifest]:
    """The manifest stored under `key`, read straight from its memcached."""
    cluster = h.pools["default"]
    k = cluster.resolve(key)
    reply = raw_command(k.server.address, b"get " + k.wire + b"\r\n")
    header, rest = reply.split(b"\r\n", 1)
    size = int(header.split()[3])
    return cluster, Manifest.unpack(rest[:size], key)


def chunk_servers(h: CacheHandler, key: str) -> set[str]:
    cluster, manifest = manifest_of(h, key)
    wire = cluster.resolve(key).wire
    return {cluster.resolve(n).server.address for n in manifest.chunk_names(wire)}


def test_5mib_round_trip_and_multi_calls(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    value = blob(5 * MIB, 1)
    assert h.put("big", value, WriteOptions(ttl=300)) == StoreResult.STORED
    item = h.get("big", None)
    assert item.found and item.value == value and item.flags == 0 and item.cas != 0
    assert manifest_of(h, "big")[1].count == 6  # 1 MiB items hold 5 MiB in 6 chunks
    assert chunk_servers(h, "big") <= set(servers)
    counters = h.counters()
    assert counters["cache.default.large.written"] == 1
    assert counters["cache.default.large.read"] == 1

    other = blob(MIB + 1, 2)
    assert h.put_multi([Entry("b2", other), Entry("s", b"small")], None) == {
        "b2": StoreResult.STORED, "s": StoreResult.STORED,
    }
    got = h.get_multi(["big", "s", "none", "b2"], None, True)
    assert [(i.key, i.found) for i in got] == [
        ("big", True), ("s", True), ("none", False), ("b2", True),
    ]
    assert got[0].value == value and got[3].value == other
    assert h.get_and_touch("b2", 100, None).value == other

    # Types, user flags and compression survive the split.
    text = b"%d" % 7 * (3 * MIB)
    h.put("typed", text, WriteOptions(user_flags=9, compress=True))
    typed = h.get("typed", None)
    assert (typed.value, typed.user_flags) == (text, 9)
    assert h.get("typed", ReadOptions(decompress=False)).value != text

    # Appending to a manifest would corrupt it; conditional stores keep their meaning.
    with pytest.raises(ServiceError) as info:
        h.append("big", b"x", None)
    assert info.value.code == 409
    assert h.add("big", blob(2 * MIB, 3), None) == StoreResult.NOT_STORED
    assert h.get("big", None).value == value
    assert h.cas("big", other, item.cas, None) == StoreResult.STORED
    assert h.get("big", None).value == other
    assert h.remove("big", None) is True
    assert not h.get("big", None).found


def test_60mib_round_trip(make_memcached: Callable[..., Child], make_handler: MakeHandler) -> None:
    children = [make_memcached(memory_mb=256) for _ in range(3)]
    h = make_handler([c.address for c in children], io_timeout_ms=20000)
    value = blob(60 * MIB, 4)
    with gevent.Timeout(120):
        assert h.put("huge", value, None) == StoreResult.STORED
        got = h.get("huge", None).value
    assert len(got) == len(value) and got == value
    del got
    # 61 chunks spread over the ring (all on two servers: odds about 1 in 10^10).
    assert len(chunk_servers(h, "huge")) == 3
    with pytest.raises(ServiceError) as info:
        h.put("over", b"\0" * (64 * MIB + 1), None)
    assert info.value.code == 413


def test_concurrent_writers_never_tear(servers: list[str], make_handler: MakeHandler) -> None:
    """Four writers rewrite one key with four different values (9 chunks each, small
    chunks) while four readers read it; every hit is exactly one of the written values."""
    h = make_handler(servers, item_size_max_bytes=64 * 1024)
    values = [blob(560 * 1024, 10 + i) for i in range(4)]
    assert manifest_chunks(values[0], h) == 9
    done = gevent.event.Event()
    seen: dict[int, int] = {}
    wrong: list[int] = []

    def write(i: int) -> None:
        for _ in range(25):
            assert h.put("torn", values[i], None) == StoreResult.STORED
            gevent.sleep(0)

    def read() -> None:
        for _ in range(2000):
            if done.is_set():
                return
            item = h.get("torn", None)
            if item.found:
                if item.value in values:
                    n = values.index(item.value)
                    seen[n] = seen.get(n, 0) + 1
                else:
                    wrong.append(len(item.value))
            gevent.sleep(0)

    readers = [gevent.spawn(read) for _ in range(4)]
    writers = [gevent.spawn(write, i) for i in range(4)]
    with gevent.Timeout(90):
        gevent.joinall(writers, raise_error=True)
        done.set()
        gevent.joinall(readers, raise_error=True)
    assert wrong == []
    assert sum(seen.values()) > 0 and len(seen) >= 2
    assert h.get("torn", None).value in values
    assert h.counters()["cache.default.large.checksum_failures"] == 0


def manifest_chunks(value: bytes, h: CacheHandler) -> int:
    return -(-len(value) // h.large["default"].chunk_bytes)


def test_kill9_chunk_server_is_a_miss(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    children = [make_memcached() for _ in range(3)]
    h = make_handler([c.address for c in children], item_size_max_bytes=64 * 1024,
                     failure_limit=1, retry_timeout_ms=60000, connect_timeout_ms=500)
    # A key whose manifest lives on one server and some chunks on another.
    value = blob(2 * MIB, 5)
    key, victim = "", ""
    for i in range(20):
        key = f"k9-{i}"
        assert h.put(key, value, None) == StoreResult.STORED
        home = h.pools["default"].resolve(key).server.address
        others = chunk_servers(h, key) - {home}
        if others:
            victim = sorted(others)[0]
            break
    assert victim
    assert h.get(key, None).value == value
    next(c for c in children if c.address == victim).kill9()
    for _ in range(3):  # the failing read, then reads while it is marked down
        item = h.get(key, None)
        assert (item.found, item.value) == (False, b"")
    assert h.counters()["cache.default.large.missing"] >= 3
