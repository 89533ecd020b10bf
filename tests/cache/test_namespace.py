"""Namespaces against real memcached: versioned keys, O(1) invalidation, key-length rules."""

from __future__ import annotations

import pytest

from glammp.cache.ttypes import Entry, ReadOptions, StoreResult, Target, WriteOptions
from services.cache import namespace
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler, raw_command, raw_keys


def ns_read(ns: str) -> ReadOptions:
    return ReadOptions(target=Target(ns=ns))


def ns_write(ns: str) -> WriteOptions:
    return WriteOptions(target=Target(ns=ns))


def test_invalidate_hides_only_that_namespace(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(servers)
    keys = [f"k{i}" for i in range(20)]
    for k in keys:
        assert h.put(k, b"users-" + k.encode(), ns_write("users")) == StoreResult.STORED
        assert h.put(k, b"posts-" + k.encode(), ns_write("posts")) == StoreResult.STORED
        assert h.put(k, b"plain-" + k.encode(), None) == StoreResult.STORED
    # Same key, three different items.
    assert h.get("k3", ns_read("users")).value == b"users-k3"
    assert h.get("k3", ns_read("posts")).value == b"posts-k3"
    assert h.get("k3", None).value == b"plain-k3"

    h.invalidate_namespace("users", "")
    assert [h.get(k, ns_read("users")).found for k in keys] == [False] * 20
    multi = h.get_multi(keys, ns_read("users"), True)
    assert [i.found for i in multi] == [False] * 20
    assert [i.value for i in h.get_multi(keys, ns_read("posts"), True)] == [
        b"posts-" + k.encode() for k in keys
    ]
    assert h.get("k3", None).value == b"plain-k3"

    # Writes after the invalidation live under the new version.
    assert h.put("k3", b"new", ns_write("users")) == StoreResult.STORED
    assert h.get("k3", ns_read("users")).value == b"new"
    assert h.put_multi([Entry("m1", b"1"), Entry("m2", b"2")], ns_write("users")) == {
        "m1": StoreResult.STORED, "m2": StoreResult.STORED,
    }
    assert h.remove_multi(["m1", "zz"], Target(ns="users")) == {"m1": True, "zz": False}
    assert h.get("m2", ns_read("users")).value == b"2"


def test_second_instance_sees_invalidation(servers: list[str], make_handler: MakeHandler) -> None:
    a, b = make_handler(servers), make_handler(servers)
    a.put("x", b"1", ns_write("t"))
    assert b.get("x", ns_read("t")).value == b"1"
    b.invalidate_namespace("t", None)
    assert not a.get("x", ns_read("t")).found


def test_version_key_and_item_keys_in_memcached(
    servers: list[str], make_handler: MakeHandler
) -> None:
    h = make_handler(servers[:1])
    h.put("a", b"v", ns_write("sess"))
    reply = raw_command(servers[0], b"get ns:sess\r\n")
    version = int(reply.split(b"\r\n")[1])
    assert raw_keys(servers[0], [f"sess:{version}:a"]) == {f"sess:{version}:a"}
    h.invalidate_namespace("sess", None)
    assert int(raw_command(servers[0], b"get ns:sess\r\n").split(b"\r\n")[1]) == version + 1
    # A lost counter is re-created from the clock, never back at an old version.
    raw_command(servers[0], b"delete ns:sess\r\n", end=b"\r\n")
    assert not h.get("a", ns_read("sess")).found


def test_key_length_counts_the_namespace(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, prefix="p:")
    version_len = len(namespace.key_prefix(h.pools["default"], "n", 1e18)) - len("n::")
    room = 250 - len("p:") - len("n::") - version_len
    assert h.put("k" * room, b"fits", ns_write("n")) == StoreResult.STORED
    assert h.get("k" * room, ns_read("n")).value == b"fits"
    with pytest.raises(ServiceError) as info:
        h.put("k" * (room + 1), b"too long", ns_write("n"))
    assert info.value.code == 400
    for bad in ("", "has space", "x" * 101):
        with pytest.raises(ServiceError) as info:
            h.get("k", ns_read(bad))
        assert info.value.code == 400
        with pytest.raises(ServiceError):
            h.invalidate_namespace(bad, None)
