"""The Cache handler served by the real server core, called through the generated client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TFramedTransport

import glammp.cache.Cache
from glammp.cache.ttypes import Loader, ReadOptions, StoreResult, Target, WriteOptions
from glammp.common.ttypes import ServiceError
from services.cache import service
from services.core.dispatch import Mount
from tests.cache.conftest import MakeHandler


@contextmanager
def cache_client(address: tuple[str, int]) -> Iterator[Any]:
    sock = TSocket(address[0], address[1])
    trans = TFramedTransport(sock)
    trans.open()
    try:
        proto = TMultiplexedProtocol(TBinaryProtocol(trans), service.SERVICE_NAME)
        yield glammp.cache.Cache.Client(proto)
    finally:
        trans.close()


@pytest.fixture
def address(servers: list[str], make_handler: MakeHandler,
            serve: Callable[..., Any]) -> tuple[str, int]:
    handler = make_handler(servers)
    mount = Mount(service.SERVICE_NAME, service.MODULE, handler, service.ORIGIN,
                  deadlines_ms=service.DEADLINES_MS, idempotent=service.IDEMPOTENT)
    proc = serve([mount])
    host, port = proc.server.address
    return host, port


def test_oneway_then_read_on_one_connection(address: tuple[str, int]) -> None:
    with cache_client(address) as c:
        for i in range(20):
            c.put_async(f"ow{i}", b"%d" % i, WriteOptions(ttl=60))
        c.remove_async("ow5", None)
        items = c.get_multi([f"ow{i}" for i in range(20)], None, True)
        assert [i.found for i in items] == [i != 5 for i in range(20)]
        assert items[7].value == b"7"


def test_send_recv_is_get_delayed(address: tuple[str, int]) -> None:
    with cache_client(address) as c:
        assert c.put("d1", b"x", None) == StoreResult.STORED
        c.send_get_multi(["d1", "d2"], None, False)  # like getDelayed: the request goes out
        items = c.recv_get_multi()                      # ... and fetchAll reads the answer
        assert [(i.key, i.value) for i in items] == [("d1", b"x")]


def test_errors_reach_the_caller(address: tuple[str, int]) -> None:
    with cache_client(address) as c:
        with pytest.raises(ServiceError) as info:
            c.get("bad key", None)
        assert info.value.code == 400 and info.value.origin == "cache"
        with pytest.raises(ServiceError) as info:
            c.get_or_compute("k", Loader(name="f"), None)
        assert info.value.code == 501
        assert c.get("d1", None).found is False  # the connection is still usable


def test_beyond_pecl_over_thrift(address: tuple[str, int]) -> None:
    with cache_client(address) as c:
        ns = Target(ns="users")
        assert c.put("u1", b"alice", WriteOptions(target=ns)) == StoreResult.STORED
        assert c.get("u1", ReadOptions(target=ns)).value == b"alice"
        c.invalidate_namespace("users", "")
        assert c.get("u1", ReadOptions(target=ns)).found is False
        answers = [c.rate_limit("ip:1", 2, 60_000, None) for _ in range(3)]
        assert [(r.allowed, r.count) for r in answers] == [(True, 1), (True, 2), (False, 3)]
        big = bytes(range(256)) * (8 * 1024 + 3)  # 2 MiB and a bit: three chunks
        assert c.put("big", big, None) == StoreResult.STORED
        assert c.get("big", None).value == big
