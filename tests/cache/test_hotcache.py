"""The in-process L1: its rules alone, then in front of a real memcached."""

from __future__ import annotations

from glammp.cache.ttypes import CounterOptions, Entry, ReadOptions, Target, WriteOptions
from services.cache.hotcache import HotCache
from tests.cache.conftest import MakeHandler, raw_command


def test_ttl_bound_and_epoch() -> None:
    hot: HotCache[int] = HotCache(["h:"], ttl_s=60, max_items=2)
    assert hot.wanted("h:1") and not hot.wanted("x:1")
    assert not HotCache([], 60, 2).wanted("h:1")
    hot.put(b"a", 1, hot.epoch)
    hot.put(b"b", 2, hot.epoch)
    assert hot.get(b"a") == 1  # a is now the most recently used
    hot.put(b"c", 3, hot.epoch)
    assert (hot.get(b"a"), hot.get(b"b"), hot.get(b"c")) == (1, None, 3)
    # A read that started before a write does not keep what it read.
    seen = hot.epoch
    hot.drop([b"c"])
    hot.put(b"c", 33, seen)
    assert hot.get(b"c") is None
    expired: HotCache[int] = HotCache(["h:"], ttl_s=0, max_items=2)
    expired.put(b"a", 1, expired.epoch)
    assert expired.get(b"a") is None and len(expired) == 0


def raw_set(address: str, key: str, value: bytes) -> None:
    data = b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value)
    assert raw_command(address, data, end=b"\r\n") == b"STORED\r\n"


def test_l1_serves_hot_keys_and_drops_them_on_writes(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(servers[:1], hot_prefixes=["cfg:"], hot_ttl_ms=600_000)
    other = make_handler(servers[:1])
    h.put("cfg:a", b"v1", None)
    assert h.get("cfg:a", None).value == b"v1"  # read from memcached, kept
    other.put("cfg:a", b"v2", None)  # a write through another instance
    assert h.get("cfg:a", None).value == b"v1"  # served from L1 (bounded by hot_ttl_ms)
    assert h.counters()["cache.default.hot.hits"] == 1

    writes = [
        lambda: h.put("cfg:a", b"v3", None),
        lambda: h.append("cfg:a", b"+", None),
        lambda: h.put_multi([Entry("cfg:a", b"v4")], None),
        lambda: h.remove("cfg:a", None),
        lambda: h.increment("cfg:a", 1, CounterOptions(initial=5)),
        lambda: h.put_async("cfg:a", b"v5", None),
        lambda: h.remove_multi(["cfg:a"], None),
        lambda: h.flush(0, None),
    ]
    for write in writes:
        h.get("cfg:a", None)  # fill (or a miss)
        raw_set(servers[0], "cfg:a", b"7")  # changed elsewhere (a number: increment)
        write()
        expected = other.get("cfg:a", None)
        assert h.get("cfg:a", ReadOptions()) == expected, write

    # Keys without a hot prefix are never kept.
    h.put("plain", b"p1", None)
    assert h.get("plain", None).value == b"p1"
    other.put("plain", b"p2", None)
    assert h.get("plain", None).value == b"p2"

    # A namespace invalidation is seen at once: the namespaced key is another key.
    ns = ReadOptions(target=Target(ns="n"))
    h.put("cfg:n", b"old", None)
    other.put("cfg:n", b"in-ns", WriteOptions(target=Target(ns="n")))
    assert h.get("cfg:n", ns).value == b"in-ns"
    other.invalidate_namespace("n", None)
    assert not h.get("cfg:n", ns).found


def test_get_multi_uses_the_l1(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, hot_prefixes=["cfg:"], hot_ttl_ms=600_000)
    other = make_handler(servers)
    h.put_multi([Entry("cfg:1", b"a"), Entry("cfg:2", b"b"), Entry("x", b"c")], None)
    keys = ["cfg:1", "cfg:2", "x", "cfg:none"]
    assert [i.value for i in h.get_multi(keys, None, True)] == [b"a", b"b", b"c", b""]
    other.put_multi([Entry("cfg:1", b"A"), Entry("cfg:2", b"B"), Entry("x", b"C")], None)
    # The hot keys come from the L1 (one of them also through get), the others from memcached.
    assert h.get("cfg:2", None).value == b"b"
    assert [i.value for i in h.get_multi(keys, None, True)] == [b"a", b"b", b"C", b""]
    h.remove("cfg:1", None)  # dropped from the L1 and from memcached
    hits = h.get_multi(keys, None, False)
    assert [(i.key, i.value) for i in hits] == [("cfg:2", b"b"), ("x", b"C")]
    assert h.counters()["cache.default.hot.hits"] == 4
