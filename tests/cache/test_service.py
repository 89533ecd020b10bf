"""Every issue-3 method of the Cache handler against three real memcached processes."""

from __future__ import annotations

import time

import pytest

from glammp.cache.ttypes import (
    CounterOptions,
    Entry,
    ReadOptions,
    StoreResult,
    Target,
    ValueType,
    WriteOptions,
)
from services.cache.service import PoolConfig
from services.core.children import wait_for
from services.core.context import CallContext, ConnectionState, set_current
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler, raw_keys


def code_of(fn: object, *args: object) -> int:
    with pytest.raises(ServiceError) as info:
        fn(*args)  # type: ignore[operator]
    return int(info.value.code)


def test_get_miss_and_hit(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    miss = h.get("nope", None)
    assert (miss.found, miss.value, miss.cas) == (False, b"", 0)
    assert h.put("k1", b"v1", None) == StoreResult.STORED
    item = h.get("k1", ReadOptions())
    assert (item.found, item.value, item.flags, item.type, item.user_flags) == (
        True, b"v1", 0, ValueType.STRING, 0,
    )
    assert item.cas > 0


def test_put_types_and_user_flags(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    h.put("n", b"-42", WriteOptions(type=ValueType.LONG, user_flags=5))
    item = h.get("n", None)
    assert (item.value, item.flags, item.type, item.user_flags) == (
        b"-42", 0x50001, ValueType.LONG, 5,
    )
    assert code_of(h.put, "n", b"4x2", WriteOptions(type=ValueType.LONG)) == 400
    assert code_of(h.put, "b", b"yes", WriteOptions(type=ValueType.BOOL)) == 400
    assert code_of(h.put, "j", b"{", WriteOptions(type=ValueType.JSON)) == 400
    assert code_of(h.put, "u", b"x", WriteOptions(user_flags=70000)) == 400
    assert code_of(h.put, "t", b"x", WriteOptions(ttl=-1)) == 400


def test_add_replace_append_prepend(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    assert h.add("a", b"1", None) == StoreResult.STORED
    assert h.add("a", b"2", None) == StoreResult.NOT_STORED
    assert h.replace("missing", b"x", None) == StoreResult.NOT_STORED
    assert h.replace("a", b"b", None) == StoreResult.STORED
    assert h.append("a", b"c", None) == StoreResult.STORED
    assert h.prepend("a", b"a", None) == StoreResult.STORED
    assert h.get("a", None).value == b"abc"
    assert h.append("missing", b"x", None) == StoreResult.NOT_STORED


def test_append_refused_on_compressed_item(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    h.put("z", b"x" * 5000, WriteOptions(compress=True))
    assert h.get("z", ReadOptions(decompress=False)).value != b"x" * 5000
    assert code_of(h.append, "z", b"y", None) == 409
    assert h.get("z", None).value == b"x" * 5000


def test_cas_stored_exists_not_found(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    h.put("c", b"1", None)
    token = h.get("c", None).cas
    assert h.cas("c", b"2", token, None) == StoreResult.STORED
    assert h.cas("c", b"3", token, None) == StoreResult.EXISTS
    assert h.get("c", None).value == b"2"
    assert h.cas("gone", b"x", token, None) == StoreResult.NOT_FOUND
    assert code_of(h.cas, "c", b"x", 0, None) == 400


def test_get_multi_order_and_misses(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    keys = [f"m{i}" for i in range(50)]
    for k in keys[::2]:
        h.put(k, k.encode(), None)
    hits = h.get_multi(keys, None, False)
    assert sorted(i.key for i in hits) == sorted(keys[::2])
    assert all(i.value == i.key.encode() for i in hits)
    ordered = h.get_multi(list(reversed(keys)), None, True)
    assert [i.key for i in ordered] == list(reversed(keys))
    assert [i.found for i in ordered] == [int(k[1:]) % 2 == 0 for k in reversed(keys)]
    assert h.get_multi([], None, True) == []
    # The keys really are spread over the three servers.
    assert all(raw_keys(s, keys) for s in servers)


def test_put_multi_and_remove_multi_per_key(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    entries = [Entry(key=f"p{i}", value=str(i).encode(), type=ValueType.LONG) for i in range(30)]
    result = h.put_multi(entries, WriteOptions(ttl=100))
    assert result == {f"p{i}": StoreResult.STORED for i in range(30)}
    assert h.get("p7", None).type == ValueType.LONG
    removed = h.remove_multi(["p1", "p2", "nokey"], None)
    assert removed == {"p1": True, "p2": True, "nokey": False}
    assert not h.get("p1", None).found
    assert code_of(h.put_multi, [Entry(key="bad key", value=b"x")], None) == 400


def test_touch_remove(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    h.put("t", b"x", None)
    assert h.touch("t", 100, None) is True
    assert h.touch("missing", 100, None) is False
    assert h.remove("t", None) is True
    assert h.remove("t", None) is False


def test_ttl_expiry_and_get_and_touch(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    h.put("short", b"x", WriteOptions(ttl=1))
    h.put("kept", b"y", WriteOptions(ttl=1))
    assert h.get_and_touch("kept", 100, None).value == b"y"
    assert not h.get_and_touch("missing", 100, None).found
    wait_for(lambda: not h.get("short", None).found, 5, 0.1, "short-TTL item expired")
    assert h.get("kept", None).found


def test_counters_initial_ttl_and_clamp(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    missing = h.increment("ctr", 5, None)
    assert (missing.found, missing.value) == (False, 0)
    created = h.increment("ctr", 5, CounterOptions(initial=100, ttl=1))
    assert (created.found, created.value) == (True, 100)
    assert h.increment("ctr", 5, CounterOptions(initial=100)).value == 105
    assert h.decrement("ctr", 1000, None).value == 0
    wait_for(lambda: not h.increment("ctr", 1, None).found, 5, 0.1, "counter expired")
    h.put("text", b"abc", None)
    assert code_of(h.increment, "text", 1, None) == 400
    assert code_of(h.increment, "ctr", -1, None) == 400
    h.put("big", b"18446744073709551615", None)
    assert h.increment("big", 0, None).value == -1  # 2^64-1 wraps to i64


def test_key_rules(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, prefix="app1:")
    assert h.put("k" * 245, b"x", None) == StoreResult.STORED
    for bad in ("k" * 246, "", "a b", "a\x01b", "tab\t", "del\x7f", "ü"):
        with pytest.raises(ServiceError) as info:
            h.get(bad, None)
        assert info.value.code == 400
        assert "rule" in info.value.details


def test_prefix_is_on_the_wire(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, prefix="app1:")
    h.put("pk", b"v", None)
    server = h.server_for_key("pk", None)
    assert raw_keys(f"{server.host}:{server.port}", ["app1:pk"]) == {"app1:pk"}


def test_server_key_colocates(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    target = Target(server_key="user:42")
    owner = h.server_for_key("anything", target)
    for i in range(20):
        h.put(f"u42:{i}", b"x", WriteOptions(target=target))
    address = f"{owner.host}:{owner.port}"
    assert raw_keys(address, [f"u42:{i}" for i in range(20)]) == {f"u42:{i}" for i in range(20)}
    assert h.get("u42:3", ReadOptions(target=target)).found


def test_named_pools_servers_and_ns(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(pools={
        "default": PoolConfig(servers=servers[:2]),
        "sessions": PoolConfig(servers=[servers[2] + ":3"], prefix="s:"),
    })
    h.put("x", b"1", WriteOptions(target=Target(pool="sessions")))
    assert raw_keys(servers[2], ["s:x"]) == {"s:x"}
    assert not h.get("x", None).found
    assert [(s.port, s.weight) for s in h.servers("sessions")] == [
        (int(servers[2].rsplit(":", 1)[1]), 3)
    ]
    assert len(h.servers("")) == 2
    assert code_of(h.servers, "nope") == 404
    assert not h.get("x", ReadOptions(target=Target(ns="users"))).found


def test_admin_stats_versions_flush(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    stats = h.stats("", None)
    assert set(stats) == set(servers)
    assert all("curr_items" in s for s in stats.values())
    assert all("item_size_max" in s for s in h.stats("settings", None).values())
    assert code_of(h.stats, "x\r\nflush_all", None) == 400
    h.put("sk", b"x", None)
    assert {r.get("reply") for r in h.stats("detail on", None).values()} == {"OK"}
    h.get("pfx:sk", None)
    dumps = h.stats("detail dump", None)
    assert any(k.startswith("PREFIX") for d in dumps.values() for k in d)
    assert h.stats("detail off", None)
    assert {r.get("reply") for r in h.stats("reset", None).values()} == {"RESET"}
    assert all("error" not in d for d in h.stats("cachedump 1 100", None).values())
    assert h.get("sk", None).found  # every connection is still in sync
    assert set(h.versions(None).values()) == {"1.6.18"} or all(h.versions(None).values())
    h.put("f", b"x", None)
    h.flush(0, None)
    assert not h.get("f", None).found


def test_too_large_is_413(servers: list[str], make_handler: MakeHandler) -> None:
    # Over the configured maximum: refused before anything is sent.
    h = make_handler(servers, max_value_bytes=2 * 1024 * 1024)
    assert code_of(h.put, "huge", b"x" * (2 * 1024 * 1024 + 1), None) == 413
    # A pool configured with a larger item size than its memcacheds have: memcached's own
    # refusal is a 413 too, and the connection stays usable.
    h = make_handler(servers, item_size_max_bytes=4 * 1024 * 1024)
    with pytest.raises(ServiceError) as info:
        h.put("huge", b"x" * (1024 * 1024 + 10), None)
    assert info.value.code == 413
    assert h.put("small", b"x", None) == StoreResult.STORED  # the connection still works


def context(conn: ConnectionState) -> CallContext:
    return CallContext("r1", "Cache", "call", time.monotonic() + 5, conn)


def test_oneway_writes_visible_to_next_call_on_connection(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(pools={"default": PoolConfig(servers=servers)},
                     cache={"async_delay_ms": 60000})  # no timer flush
    conn = ConnectionState("test-peer")
    set_current(context(conn))
    try:
        for i in range(10):
            h.put_async(f"as{i}", b"v%d" % i, None)
        h.remove_async("as3", None)
        # Nothing sent yet: the writes wait in this connection's buffer.
        assert not raw_keys(servers[0], ["as0"]) and sum(
            len(raw_keys(s, [f"as{i}" for i in range(10)])) for s in servers
        ) == 0
        items = h.get_multi([f"as{i}" for i in range(10)], None, True)
        assert [i.found for i in items] == [i != 3 for i in range(10)]
    finally:
        set_current(None)
    assert h.oneway_stats.sent == 11 and h.oneway_stats.failed == 0


def test_oneway_flush_by_timer_size_and_close(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(servers)
    conn = ConnectionState("peer")
    set_current(context(conn))
    try:
        h.put_async("timer", b"t", None)
    finally:
        set_current(None)
    wait_for(lambda: h.get("timer", None).found, 5, 0.01, "timer flush")

    h = make_handler(servers, cache={"async_delay_ms": 60000, "async_max_ops": 5})
    conn2 = ConnectionState("peer2")
    set_current(context(conn2))
    try:
        for i in range(5):
            h.put_async(f"size{i}", b"s", None)
        h.put_async("closed", b"c", None)
    finally:
        set_current(None)
    # The fifth write filled the buffer and sent it; the sixth waits for the close.
    assert h.get("size4", None).found and not h.get("closed", None).found
    for fn in conn2.closers:
        fn()
    assert h.get("closed", None).found


def test_oneway_without_context_sends_now_and_counts_failures(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(servers, max_value_bytes=2 * 1024 * 1024)
    h.put_async("now", b"n", None)
    assert h.get("now", None).found
    h.put_async("bad key", b"x", None)
    h.put_async("toolarge", b"x" * (2 * 1024 * 1024 + 10), None)
    assert h.oneway_stats.failed == 2
    assert h.oneway_stats.sent == 1
    # Above one item but under the maximum: split into chunks, written at once.
    h.put_async("large", b"y" * (1024 * 1024 + 10), None)
    assert h.oneway_stats.sent == 2
    assert h.get("large", None).value == b"y" * (1024 * 1024 + 10)


def test_flush_with_delay(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers[:1])
    h.put("later", b"x", None)
    h.flush(2, None)
    assert h.get("later", None).found
    wait_for(lambda: not h.get("later", None).found, 5, 0.1, "delayed flush")


def test_health_and_counters(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    status, detail = h.health()
    assert status == 2 and "3 memcached" in detail
    assert h.counters()["cache.oneway.failed"] == 0
