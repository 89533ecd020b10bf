"""Routing, passthrough, translation and the errors the gateway synthesizes (in-process)."""

from __future__ import annotations

import socket
import struct

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TMemoryBuffer

from glammp.base.ttypes import Status
from glammp.cache import Cache
from glammp.common.ttypes import ErrorCode, ServiceError
from services.core.children import free_port, wait_for
from tests.core.dialects import DIALECTS, client


def test_base_is_answered_by_the_gateway(gateway):
    host, port = gateway().address
    with client(host, port, "framed-binary", "Base") as c:
        assert c.getName() == "glammp-gateway"
        assert c.getStatus() == Status.ALIVE
    with client(host, port, "framed-binary", "Base", multiplexed=False) as c:
        assert c.getName() == "glammp-gateway"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_reaches_a_binary_upstream(gateway, upstreams, dialect):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with client(host, port, dialect, "Cache") as c:
        for i in range(3):
            item = c.get(f"key-{i}", None)
            assert item.found and item.value == f"key-{i}".encode()
        with pytest.raises(ServiceError) as e:
            c.get("missing", None)
        assert e.value.code == ErrorCode.NOT_FOUND and e.value.origin == "cache"
        assert e.value.details == {"key": "missing"}
        assert c.getStatus() == Status.ALIVE  # Cache:getStatus goes upstream


def test_calls_spread_over_instances_and_share_connections(gateway, upstreams):
    ups = upstreams(2)
    gw = gateway(upstreams={"Cache": [a for a, _ in ups]})
    host, port = gw.address
    seen = set()
    for _ in range(20):
        with client(host, port, "framed-binary", "Cache") as c:
            seen.add(c.get("tag", None).value)
    assert seen == {b"u0", b"u1"}
    # Twenty sequential callers needed no more than one pooled connection per instance.
    assert all(len(i.links) == 1 for i in gw.clusters["Cache"].instances)


def test_non_multiplexed_callers_go_to_the_default_service(gateway, upstreams):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}, default_service="Cache").address
    with client(host, port, "framed-binary", "Cache", multiplexed=False) as c:
        assert c.get("plain", None).value == b"plain"


def test_unknown_service_is_unknown_method(gateway):
    host, port = gateway().address
    with client(host, port, "framed-binary", "Jobs") as c:
        with pytest.raises(TApplicationException) as e:
            c.workers()
        assert e.value.type == TApplicationException.UNKNOWN_METHOD
        # The connection is still usable.
        with pytest.raises(TApplicationException):
            c.workers()


def test_no_instance_listening_is_503_retryable_at_once(gateway):
    dead = f"127.0.0.1:{free_port()}"
    host, port = gateway(upstreams={"Cache": [dead]}).address
    with client(host, port, "framed-compact", "Cache") as c:
        for _ in range(5):
            with pytest.raises(ServiceError) as e:
                c.get("k", None)
            assert e.value.code == ErrorCode.UNAVAILABLE
            assert e.value.retryable is True and e.value.origin == "gateway"
            assert e.value.request_id


def test_deadline_is_504_retryable_only_when_idempotent(gateway, upstreams):
    (addr, _), = upstreams(1)
    gw = gateway(upstreams={"Cache": [addr]},
                 deadlines_ms={"Cache.get": 200, "Cache.get_and_touch": 200})
    host, port = gw.address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get("sleep:1.5", None)
        assert e.value.code == ErrorCode.TIMEOUT and e.value.retryable is True
        assert e.value.origin == "gateway"
        # The same connection goes on working; the stuck upstream connection was retired.
        assert c.get("after", None).value == b"after"
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get_and_touch("k", 1, None)  # not idempotent; the test app answers 501 late
        assert e.value.code in (ErrorCode.TIMEOUT, ErrorCode.NOT_IMPLEMENTED)


def test_caller_deadline_budget_header_is_honoured(gateway, upstreams):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with client(host, port, "header-binary", "Cache", headers={"Deadline-Budget": "150"}) as c:
        with pytest.raises(ServiceError) as e:
            c.get("sleep:1", None)
        assert e.value.code == ErrorCode.TIMEOUT


def test_oneway_calls_are_forwarded(gateway, upstreams):
    (addr, handler), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with client(host, port, "framed-binary", "Cache") as c:
        c.put_async("k1", b"v1", None)
        c.put_async("k2", b"v2", None)
        assert c.get("x", None).value == b"x"  # replies are not mixed up with oneways
    wait_for(lambda: handler.last_async == ("k2", b"v2"), 5, what="oneway delivered")


def test_admin_methods_are_denied_unless_allowed(gateway, upstreams):
    from gateway.config import AccessRule

    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.flush(0, "default")
        assert e.value.code == ErrorCode.FORBIDDEN and e.value.origin == "gateway"
        assert c.get("ok", None).found
    allowed = gateway(upstreams={"Cache": [addr]},
                      access=[AccessRule(callers=["127.0.0.0/8"], allow=["Cache.flush"])])
    with client(*allowed.address, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.flush(0, "default")
        # Reached the upstream, whose test handler has no flush.
        assert e.value.code == ErrorCode.NOT_IMPLEMENTED and e.value.origin == "cache"


def test_access_rules_deny_by_network(gateway, upstreams):
    from gateway.config import AccessRule

    (addr, _), = upstreams(1)
    rules = [AccessRule(callers=["10.0.0.0/8"], allow=["*"]),
             AccessRule(callers=["127.0.0.1/32"], deny=["Cache.*"])]
    host, port = gateway(upstreams={"Cache": [addr]}, access=rules).address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get("k", None)
        assert e.value.code == ErrorCode.FORBIDDEN
    with client(host, port, "framed-binary", "Base") as c:
        assert c.getStatus() == Status.ALIVE


def test_rate_limit_answers_429_with_retry_after(gateway, upstreams):
    from gateway.config import RateLimitConfig

    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]},
                         rate_limits={"Cache": RateLimitConfig(rate_per_s=0.5, burst=3)}).address
    with client(host, port, "framed-binary", "Cache") as c:
        got = []
        for _ in range(5):
            try:
                c.get("k", None)
                got.append(0)
            except ServiceError as e:
                got.append(e.code)
                assert e.retryable is True and e.retry_after_ms and e.retry_after_ms > 0
        assert got == [0, 0, 0, 429, 429]
    # Other services of the same caller are not limited.
    with client(host, port, "framed-binary", "Base") as c:
        assert c.getStatus() == Status.ALIVE


def _get_request(key: str, seqid: int = 7, service: str = "Cache") -> bytes:
    buf = TMemoryBuffer()
    proto = TMultiplexedProtocol(TBinaryProtocol(buf), service)
    client = Cache.Client(proto)
    client._seqid = seqid
    client.send_get(key, None)
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def _read_frame(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        assert chunk, "gateway closed the connection"
        head += chunk
    size = struct.unpack(">i", head)[0]
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk
        data += chunk
    return data


def _result(frame: bytes) -> Cache.get_result:
    from thrift.Thrift import TMessageType

    proto = TBinaryProtocol(TMemoryBuffer(frame))
    name, mtype, seqid = proto.readMessageBegin()
    if mtype == TMessageType.EXCEPTION:
        exc = TApplicationException()
        exc.read(proto)
        raise exc
    result = Cache.get_result()
    result.read(proto)
    result.seqid = seqid
    result.name = name
    return result


def test_too_large_is_413_and_the_connection_survives(gateway, upstreams):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}, max_frame_bytes=10_000).address
    with socket.create_connection((host, port)) as sock:
        sock.sendall(_get_request("x" * 50_000, seqid=3))
        result = _result(_read_frame(sock))
        assert (result.seqid, result.name) == (3, "get")
        assert result.err.code == ErrorCode.PAYLOAD_TOO_LARGE
        sock.sendall(_get_request("small", seqid=4))
        result = _result(_read_frame(sock))
        assert result.seqid == 4 and result.success.value == b"small"


def test_pipelined_callers_get_their_own_seqids(gateway, upstreams):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"".join(_get_request(f"k{i}", seqid=100 + i) for i in range(10)))
        for i in range(10):
            result = _result(_read_frame(sock))
            assert (result.seqid, result.success.value) == (100 + i, f"k{i}".encode())
            # The bare name, as Apache's multiplexed processor answers (Go and Node check it).
            assert result.name == "get"


def test_a_caller_pipelining_far_ahead_is_answered_in_order(gateway, upstreams):
    # Far more requests than the gateway reads ahead of its answers (it stops reading until
    # they catch up): every one is answered, in order, with its own seqid.
    import gevent

    from gateway.proxy import RECV_BYTES

    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    requests = [_get_request(f"ahead-{i:05d}-" + "p" * 40, seqid=i) for i in range(4000)]
    assert sum(map(len, requests)) > 3 * RECV_BYTES
    with socket.create_connection((host, port)) as sock:
        sender = gevent.spawn(sock.sendall, b"".join(requests))
        for i in range(4000):
            result = _result(_read_frame(sock))
            assert (result.seqid, result.success.value) == (i, f"ahead-{i:05d}-".encode()
                                                            + b"p" * 40)
        sender.get(timeout=10)


def test_a_large_request_pipelined_behind_a_slow_one_is_read_whole(gateway, testapps):
    # While the first call runs the gateway reads ahead, then stops, with the second request
    # (larger than what it reads ahead) still incomplete; once the first is answered it must
    # read the rest of the second instead of waiting for it.
    app, = testapps(1)
    gw = gateway(upstreams={"Cache": [app.address]})
    host, port = gw.address
    big = "big-" + "x" * 300_000
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(20)
        sock.sendall(_get_request("sleep:1", seqid=1) + _get_request(big, seqid=2)[:200_000])
        wait_for(lambda: any(c.paused for c in gw.connections), 0.9,
                 what="the gateway to stop reading ahead while the first call runs")
        sock.sendall(_get_request(big, seqid=2)[200_000:])
        result = _result(_read_frame(sock))
        assert (result.seqid, result.success.value) == (1, b"sleep:1")
        result = _result(_read_frame(sock))
        assert (result.seqid, result.success.value) == (2, big.encode())


def test_frames_that_need_translating_between_passed_through_ones(gateway, upstreams):
    # Binary frames are relayed from the event loop; a compact or an oversized frame in
    # between is served by the connection's greenlet, then relaying resumes, in order.
    from thrift.protocol.TCompactProtocol import TCompactProtocol

    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}, max_frame_bytes=10_000).address
    buf = TMemoryBuffer()
    compact = Cache.Client(TMultiplexedProtocol(TCompactProtocol(buf), "Cache"))
    compact._seqid = 2
    compact.send_get("compact", None)
    body = buf.getvalue()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(_get_request("one", seqid=1) + struct.pack(">i", len(body)) + body
                     + _get_request("x" * 20_000, seqid=3) + _get_request("four", seqid=4))
        assert _result(_read_frame(sock)).success.value == b"one"
        reply = _read_frame(sock)
        assert reply[0] == 0x82  # compact, as asked
        result = _result(_read_frame(sock))
        assert result.seqid == 3 and result.err.code == ErrorCode.PAYLOAD_TOO_LARGE
        result = _result(_read_frame(sock))
        assert (result.seqid, result.success.value) == (4, b"four")


def test_malformed_body_in_a_whole_frame_keeps_the_connection(gateway, upstreams):
    (addr, _), = upstreams(1)
    host, port = gateway(upstreams={"Cache": [addr]}).address
    with socket.create_connection((host, port)) as sock:
        bad = b"\x82\x21\x05\x09Cache:get\xff\xff\xff"  # compact with a broken body
        sock.sendall(struct.pack(">i", len(bad)) + bad)
        reply = _read_frame(sock)
        assert reply[0] == 0x82  # answered in the caller's protocol
        sock.sendall(_get_request("fine", seqid=9))
        assert _result(_read_frame(sock)).success.value == b"fine"


@pytest.mark.parametrize("links", [8, 2])
def test_concurrent_callers_share_pooled_connections(gateway, upstreams, links):
    import gevent

    (addr, _), = upstreams(1)
    gw = gateway(upstreams={"Cache": [addr]}, connections_per_instance=links)
    host, port = gw.address
    got: list[bool] = []

    def caller(n: int) -> None:
        with client(host, port, "framed-binary", "Cache") as c:
            for i in range(20):
                got.append(c.get(f"c{n}-{i}", None).value == f"c{n}-{i}".encode())

    gevent.joinall([gevent.spawn(caller, n) for n in range(40)], timeout=60, raise_error=True)
    assert got == [True] * 800
    # Forty callers were carried by the few upstream connections allowed (plus the probe).
    assert 1 <= gw.metrics.counters["gateway_upstream_connections_opened"] <= links + 1


def test_large_replies_arrive_whole_among_small_ones(gateway, upstreams):
    # A reply of several MiB reaches the gateway in many reads while small replies for
    # other callers share its upstream connection; each caller gets exactly its own.
    import gevent

    (addr, _), = upstreams(1, max_frame_bytes=8 << 20, max_string_bytes=8 << 20)
    gw = gateway(upstreams={"Cache": [addr]}, connections_per_instance=1,
                 max_frame_bytes=8 << 20)
    host, port = gw.address
    got: list[bool] = []

    def caller(key: str) -> None:
        with client(host, port, "framed-binary", "Cache") as c:
            for _ in range(3):
                got.append(c.get(key, None).value == key.encode())

    keys = ["L" * (3 << 20), "M" * 200_000] + [f"s{i}" for i in range(8)]
    gevent.joinall([gevent.spawn(caller, k) for k in keys], timeout=60, raise_error=True)
    assert got == [True] * 30


def test_a_retired_connection_does_not_count_against_the_limit(gateway, testapps):
    # With one connection allowed: a call on it runs out of time, so it is retired, while
    # another call still holds it. New calls get a new connection, not "all full".
    import gevent

    app, = testapps(1)
    gw = gateway(upstreams={"Cache": [app.address]}, connections_per_instance=1)
    host, port = gw.address
    inst = gw.clusters["Cache"].instances[0]

    def get(key: str, dialect: str = "framed-binary", **kw: object) -> bytes | ServiceError:
        with client(host, port, dialect, "Cache", **kw) as c:
            try:
                return bytes(c.get(key, None).value)
            except ServiceError as e:
                return e

    holder = gevent.spawn(get, "wait:retired")
    wait_for(lambda: inst.outstanding == 1, 5, what="a call holding the connection")
    late = get("sleep:2", "header-binary", headers={"Deadline-Budget": "200"})
    assert isinstance(late, ServiceError) and late.code == ErrorCode.TIMEOUT
    assert get("after") == b"after"
    assert get("set:retired") == b"set:retired"
    assert holder.get(timeout=5) == b"wait:retired"
    assert gw.metrics.counters.get("gateway_upstream_pool_full", 0) == 0
