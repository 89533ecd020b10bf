"""Routes between pools against real memcached processes: replicated pools (writes reach every
copy, reads fail over when a server is killed with SIGKILL), the gutter pool (a killed server's
keys move to it for a short TTL) and the warm-up route (a cold pool fills itself from the old
one)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from glammp.cache.ttypes import (
    CounterOptions,
    Entry,
    ReadOptions,
    StoreResult,
    Target,
    WriteOptions,
)
from services.cache.service import CacheConfig, CacheHandler, PoolConfig
from services.core.children import Child
from services.core.config import ConfigError, parse
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler, raw_command, raw_keys
from tests.cache.test_faults import FAST, bounded


def remaining_ttl(address: str, key: str) -> int:
    """The TTL memcached has left for `key`, seconds (-1: never expires)."""
    reply = raw_command(address, b"mg %s t\r\n" % key.encode(), end=b"\r\n")
    assert reply.startswith(b"HD"), reply
    return int(reply.split()[1][1:])


# -- replicated pools ----------------------------------------------------------------------

REPLICA = ReadOptions(target=Target(pool="r1"))


def replicated(make_memcached: Callable[..., Child],
               make_handler: MakeHandler) -> tuple[CacheHandler, list[Child], list[Child]]:
    primary = [make_memcached() for _ in range(2)]
    replica = [make_memcached() for _ in range(2)]
    h = make_handler(pools={
        "default": PoolConfig(servers=[c.address for c in primary], replicas=["r1"], **FAST),
        "r1": PoolConfig(servers=[c.address for c in replica], **FAST),
    })
    return h, primary, replica


def held(children: list[Child], keys: list[str]) -> set[str]:
    return set().union(*(raw_keys(c.address, keys) for c in children))


def test_writes_reach_every_copy(make_memcached: Callable[..., Child],
                                 make_handler: MakeHandler) -> None:
    h, primary, replica = replicated(make_memcached, make_handler)
    keys = [f"r{i}" for i in range(20)]
    for k in keys:
        assert h.put(k, b"v-" + k.encode(), None) == StoreResult.STORED
    assert held(primary, keys) == held(replica, keys) == set(keys)
    assert h.remove("r0", None) and held(replica, ["r0"]) == set()
    assert h.touch("r1", 100, None)
    assert h.add("new", b"a", None) == StoreResult.STORED
    assert h.add("new", b"b", None) == StoreResult.NOT_STORED
    assert h.get("new", REPLICA).value == b"a"
    # Writes a replica cannot repeat leave it without a copy (a miss, never a stale value).
    assert h.append("r2", b"+", None) == StoreResult.STORED
    assert not h.get("r2", REPLICA).found and h.get("r2", None).value == b"v-r2+"
    h.increment("ctr", 1, CounterOptions(initial=5))
    assert not h.get("ctr", REPLICA).found
    assert h.put_multi([Entry("m1", b"1"), Entry("m2", b"2")], None) == {
        "m1": StoreResult.STORED, "m2": StoreResult.STORED}
    assert [i.value for i in h.get_multi(["m1", "m2"], REPLICA, True)] == [b"1", b"2"]
    assert h.remove_multi(["m1"], None) == {"m1": True}
    assert not h.get("m1", REPLICA).found
    h.put_async("a1", b"async", None)
    assert h.get("a1", REPLICA).value == b"async"


def test_kill9_a_primary_server_reads_still_hit(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    h, primary, _ = replicated(make_memcached, make_handler)
    keys = [f"k{i}" for i in range(30)]
    for k in keys:
        h.put(k, b"v-" + k.encode(), None)
    primary[0].kill9()
    for _ in range(2):  # the failing request, then while it is marked down
        items = bounded(h.get_multi, keys, None, True)
        assert [i.value for i in items] == [b"v-" + k.encode() for k in keys]  # type: ignore
        assert all(bounded(h.get, k, None).value == b"v-" + k.encode()  # type: ignore
                   for k in keys)
    lost = next(k for k in keys if h.pools["default"].resolve(k).server.address
                == primary[0].address)
    assert bounded(h.put, lost, b"during", None) == StoreResult.STORED  # a replica took it
    assert bounded(h.get, lost, None).value == b"during"  # type: ignore[attr-defined]
    counters = h.counters()
    assert counters["cache.default.replica_read_failovers"] > 0
    assert counters["cache.default.partial_misses"] == 0


def test_kill9_a_replica_server_costs_no_hit(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    h, _, replica = replicated(make_memcached, make_handler)
    keys = [f"k{i}" for i in range(30)]
    for k in keys:
        h.put(k, b"v-" + k.encode(), None)
    replica[1].kill9()
    assert all(h.get(k, None).value == b"v-" + k.encode() for k in keys)
    for k in keys:  # writes still succeed; the replica's misses are counted
        assert bounded(h.put, k, b"w-" + k.encode(), None) == StoreResult.STORED
    assert [i.value for i in h.get_multi(keys, None, True)] == [b"w-" + k.encode()
                                                                 for k in keys]
    assert h.counters()["cache.default.replica_write_failures"] > 0


# -- gutter pool --------------------------------------------------------------------------


def test_failed_servers_keys_go_to_the_gutter(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    primary = [make_memcached() for _ in range(3)]
    gutter = make_memcached()
    h = make_handler(pools={
        "default": PoolConfig(servers=[c.address for c in primary], gutter="gutter",
                              gutter_ttl_s=30, **FAST),
        "gutter": PoolConfig(servers=[gutter.address], **FAST),
    })
    keys = [f"g{i}" for i in range(30)]
    for k in keys:
        assert h.put(k, b"v-" + k.encode(), None) == StoreResult.STORED
    owner = {k: h.pools["default"].resolve(k).server.address for k in keys}
    victim = primary[0]
    lost = [k for k in keys if owner[k] == victim.address]
    kept = [k for k in keys if k not in lost]
    assert lost and kept
    victim.kill9()

    k = lost[0]
    assert not bounded(h.get, k, None).found  # type: ignore[attr-defined]
    assert bounded(h.put, k, b"fresh", WriteOptions(ttl=3600)) == StoreResult.STORED
    assert 1 <= remaining_ttl(gutter.address, k) <= 30  # capped at gutter_ttl_s
    assert bounded(h.get, k, None).value == b"fresh"  # type: ignore[attr-defined]
    assert h.add(k, b"x", None) == StoreResult.NOT_STORED
    items = bounded(h.get_multi, keys, None, True)
    assert [i.value for i in items] == [  # type: ignore[attr-defined]
        b"fresh" if key == k else b"" if key in lost else b"v-" + key.encode() for key in keys
    ]
    assert h.counters()["cache.default.partial_misses"] == 0
    assert bounded(h.remove, k, None) is True
    assert raw_command(gutter.address, b"get " + k.encode() + b"\r\n") == b"END\r\n"
    # Live servers' keys never touch the gutter.
    h.put(kept[0], b"live", None)
    assert raw_command(gutter.address, b"get " + kept[0].encode() + b"\r\n") == b"END\r\n"
    assert h.counters()["cache.default.gutter_used"] >= 5
    # Calls without a gutter meaning still fail.
    with pytest.raises(ServiceError) as info:
        h.increment(k, 1, None)
    assert info.value.code == 503


# -- warm-up ------------------------------------------------------------------------------


OLD = WriteOptions(target=Target(pool="old"))


def pools(old: list[str], new: list[str], **new_options: object) -> dict[str, PoolConfig]:
    return {"old": PoolConfig(servers=old),
            "default": PoolConfig(servers=new, warm_from="old", **new_options)}


def test_miss_reads_old_pool_and_copies_with_its_ttl(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(pools=pools(servers[:1], servers[1:2]))
    assert h.put("k", b"from-old", WriteOptions(ttl=100, target=Target(pool="old"),
                                                 user_flags=3)) == StoreResult.STORED
    item = h.get("k", None)
    assert (item.found, item.value, item.user_flags) == (True, b"from-old", 3)
    assert 90 <= remaining_ttl(servers[1], "k") <= 100  # copied with the remaining TTL
    assert h.counters()["cache.warmup.copied"] == 1
    # A newer write in the new pool wins over the old copy.
    h.put("k2", b"old", OLD)
    h.put("k2", b"new", None)
    assert h.get("k2", None).value == b"new"
    assert not h.get("nowhere", None).found
    # get_multi warms its misses too; writes go to the new pool only.
    for i in range(5):
        h.put(f"m{i}", b"o%d" % i, OLD)
    got = h.get_multi([f"m{i}" for i in range(6)], None, True)
    assert [i.value for i in got] == [b"o0", b"o1", b"o2", b"o3", b"o4", b""]
    assert h.get("m1", ReadOptions(target=Target(pool="old"))).value == b"o1"
    assert raw_command(servers[1], b"get m3\r\n").startswith(b"VALUE m3")
    # A large value is served from the old pool but not copied.
    big = b"L" * (1024 * 1024 + 5)
    h.put("big", big, OLD)
    assert h.get("big", None).value == big
    assert raw_command(servers[1], b"get big\r\n") == b"END\r\n"


def test_old_pool_down_is_a_miss(make_memcached: Callable[..., Child],
                                 make_handler: MakeHandler) -> None:
    old, new = make_memcached(), make_memcached()
    h = make_handler(pools=pools([old.address], [new.address]))
    h.put("k", b"v", OLD)
    old.kill9()
    assert not h.get("k", None).found
    assert [i.found for i in h.get_multi(["k", "j"], None, True)] == [False, False]
    assert h.counters()["cache.warmup.failures"] >= 2
    h.put("k", b"fresh", None)
    assert h.get("k", None).value == b"fresh"


@pytest.mark.parametrize("route", ["warm_from", "gutter"])
@pytest.mark.parametrize("other", ["default", "missing"])
def test_routes_must_name_another_pool(route: str, other: str) -> None:
    with pytest.raises(ConfigError):
        parse(CacheConfig, {"pools": {"default": {route: other}}}, "cache")
