"""The server core against real sockets: dialects, the error boundary, limits, garbage."""

from __future__ import annotations

import random
import socket
import struct
import time

import gevent
import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import (
    TFramedTransport,
    TMemoryBuffer,
    TTransportBase,
    TTransportException,
)

import glammp.cache.Cache
from glammp.base.ttypes import Status
from glammp.common.ttypes import ErrorCode, ServiceError
from tests.core.dialects import DIALECTS, client
from tests.core.testapp import mount


@pytest.fixture
def server(serve):
    proc = serve([mount()], max_frame_bytes=1 << 20, max_string_bytes=1 << 20)
    return proc


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_on_one_port(server, dialect):
    host, port = server.server.address
    with client(host, port, dialect, "Base") as c:
        assert c.getStatus() == Status.ALIVE
        assert c.getName() == "glammp"
    with client(host, port, dialect, "Base", multiplexed=False) as c:
        assert c.getStatus() == Status.ALIVE
    with client(host, port, dialect, "Cache") as c:
        item = c.get("k-" + dialect, None)
        assert (item.found, item.value) == (True, ("k-" + dialect).encode())
        assert c.getStatus() == Status.ALIVE  # Cache extends Base
        with pytest.raises(ServiceError) as e:
            c.get("missing", None)
        assert e.value.code == ErrorCode.NOT_FOUND and e.value.origin == "cache"


def test_unknown_service_and_method_keep_the_connection(server):
    host, port = server.server.address
    sock = TSocket(host, port)
    trans = TFramedTransport(sock)
    trans.open()
    try:
        proto = TBinaryProtocol(trans)
        nowhere = glammp.cache.Cache.Client(TMultiplexedProtocol(proto, "Nowhere"))
        with pytest.raises(TApplicationException) as e:
            nowhere.get("k", None)
        assert e.value.type == TApplicationException.UNKNOWN_METHOD
        cache = glammp.cache.Cache.Client(TMultiplexedProtocol(proto, "Cache"))
        assert cache.get("still-here", None).value == b"still-here"
    finally:
        trans.close()


def test_undeclared_exception_is_a_500_with_request_id(server):
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get("boom", None)
        assert e.value.code == ErrorCode.INTERNAL
        assert e.value.request_id and e.value.request_id in e.value.message
        assert "RuntimeError" not in e.value.message  # no traceback on the wire
        assert c.get("after", None).value == b"after"
    assert server.counters()["Cache.get.errors.500"] == 1


def test_deadline_is_a_504_and_retryable_for_idempotent(server):
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get("sleep:5", None)  # the method's deadline is 1000 ms
        assert e.value.code == ErrorCode.TIMEOUT
        assert e.value.retryable is True
        assert c.get("after", None).value == b"after"


def test_deadline_budget_header_shortens_the_deadline(server):
    host, port = server.server.address
    with client(host, port, "header-binary", "Cache", headers={"Deadline-Budget": "100"}) as c:
        with pytest.raises(ServiceError) as e:
            c.get("sleep:0.5", None)
        assert e.value.code == ErrorCode.TIMEOUT
    with client(host, port, "header-binary", "Cache", headers={"Deadline-Budget": "250"}) as c:
        remaining = float(c.get("whoami", None).value)
        assert 0 < remaining <= 0.25


def test_inflight_limit_answers_503_at_once(serve):
    proc = serve([mount()], max_inflight=2)
    host, port = proc.server.address

    def slow() -> bytes:
        with client(host, port, "framed-binary", "Cache") as c:
            return c.get("sleep:0.5", None).value

    sleepers = [gevent.spawn(slow) for _ in range(2)]
    deadline = time.monotonic() + 5
    while proc.metrics.active < 2:
        assert time.monotonic() < deadline, "the sleepers never started"
        gevent.sleep(0.005)
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.get("quick", None)
    assert e.value.code == ErrorCode.UNAVAILABLE and e.value.retryable is True
    assert proc.metrics.active == 2  # answered while both sleepers still ran
    assert [g.get(timeout=5) for g in sleepers] == [b"sleep:0.5"] * 2


def test_oversized_frame_is_refused_without_harming_others(server):
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as bystander:
        assert bystander.get("before", None).value == b"before"
        raw = socket.create_connection((host, port))
        raw.sendall(struct.pack(">i", (1 << 20) + 1) + b"\x80\x01\x00\x01")
        raw.settimeout(5)
        assert raw.recv(100) == b""  # closed by the server
        raw.close()
        with client(host, port, "framed-binary", "Cache") as big:
            with pytest.raises(TTransportException):
                big.get("x" * (2 << 20), None)
        assert bystander.get("after", None).value == b"after"
    assert server.counters()["glammp.frames_refused"] >= 2


def test_oversized_string_in_unframed_message_closes_only_that_connection(server):
    host, port = server.server.address
    with client(host, port, "unframed-binary", "Cache") as bystander:
        with client(host, port, "unframed-binary", "Cache") as big:
            with pytest.raises(TTransportException):
                big.get("y" * (2 << 20), None)
        assert bystander.get("fine", None).value == b"fine"


def _garbage(rng: random.Random, valid: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:  # a valid frame cut short
        return valid[: rng.randrange(1, len(valid))]
    if kind == 2:  # wrong protocol version inside a frame
        body = b"\x80\x07" + rng.randbytes(rng.randrange(0, 60))
        return struct.pack(">i", len(body)) + body
    if kind == 3:  # a valid header, then random bytes where the arguments go
        body = valid[4:30] + rng.randbytes(rng.randrange(1, 60))
        return struct.pack(">i", len(body)) + body
    if kind == 4:  # unframed binary with nonsense after the version
        return b"\x80\x01" + rng.randbytes(rng.randrange(0, 100))
    return b"\x82" + rng.randbytes(rng.randrange(0, 100))  # unframed compact nonsense


def _valid_frame() -> bytes:
    from thrift.transport.TTransport import TMemoryBuffer

    buf = TMemoryBuffer()
    proto = TMultiplexedProtocol(TBinaryProtocol(buf), "Cache")
    glammp.cache.Cache.Client(proto).send_get("key", None)
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def test_500_garbage_messages_leave_it_serving(server):
    host, port = server.server.address
    rng = random.Random(20261127)
    valid = _valid_frame()
    with client(host, port, "framed-binary", "Cache") as bystander:
        for i in range(500):
            s = socket.create_connection((host, port))
            s.settimeout(5)
            s.sendall(_garbage(rng, valid))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
            s.close()
            if i % 50 == 0:
                assert bystander.get(f"alive-{i}", None).value == f"alive-{i}".encode()
        assert bystander.get("end", None).value == b"end"
    with client(host, port, "unframed-compact", "Base") as c:
        assert c.getStatus() == Status.ALIVE


def test_malformed_arguments_in_a_frame_answer_protocol_error(server):
    host, port = server.server.address
    valid = _valid_frame()
    body = valid[4:-3] + b"\x0b\x00\x01\xff\xff\xff\xff"  # a string whose length is -1
    s = socket.create_connection((host, port))
    s.settimeout(5)
    s.sendall(struct.pack(">i", len(body)) + body + valid)
    # The first reply is an exception for the broken call, and the valid one is answered too.
    replies = []
    data = b""
    while len(replies) < 2:
        chunk = s.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
            size = struct.unpack(">i", data[:4])[0]
            replies.append(data[4 : 4 + size])
            data = data[4 + size :]
    s.close()
    assert replies[0][:4] == b"\x80\x01\x00\x03"  # message type EXCEPTION
    assert replies[1][:4] == b"\x80\x01\x00\x02"  # message type REPLY


def test_oneway_calls_are_served_without_a_reply(serve):
    from tests.core.testapp import MisbehavingCache

    handler = MisbehavingCache()
    proc = serve([mount(handler)])
    host, port = proc.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        c.put_async("k", b"v", None)
        assert c.get("next", None).value == b"next"  # the stream is still in step
    assert handler.last_async == ("k", b"v")


def test_unimplemented_method_is_a_501(server):
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        with pytest.raises(ServiceError) as e:
            c.touch("k", 1, None)
        assert e.value.code == ErrorCode.NOT_IMPLEMENTED


def test_counters_count_calls_by_code(server):
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        for _ in range(3):
            c.get("x", None)
        with pytest.raises(ServiceError):
            c.get("missing", None)
        counters = c.getCounters()
        assert counters["Cache.get.requests"] == 4
        assert counters["Cache.get.errors.404"] == 1
        assert c.getCounter("Cache.get.errors") == 1
        assert c.getCounter("no.such.counter") == 0


def test_binary_results_round_trip_in_every_dialect(serve):
    import glammp.filestore.Filestore
    from services.core.dispatch import Mount

    blob = bytes(range(256)) * 4096 + b"\x00end"

    class Files:
        def fetch(self, domain: str, key: str, opts: object) -> bytes:
            if key == "array":  # as the filestore answers a large body: a bytearray
                return bytearray(blob)  # type: ignore[return-value]
            return blob if key == "big" else b""

    proc = serve([Mount("Filestore", glammp.filestore.Filestore, Files(), "filestore")])
    host, port = proc.server.address
    for dialect in DIALECTS:
        with client(host, port, dialect, "Filestore") as c:
            assert c.fetch("d", "big", None) == blob
            assert c.fetch("d", "array", None) == blob
            assert c.fetch("d", "empty", None) == b""


def test_streamed_bodies_arrive_whole_and_one_cut_short_ends_only_its_connection(serve):
    # A handler's StreamedBody is written as it is read (binary fast path) or read whole
    # first (every other dialect); one that fails midway can only cut its frame, so its
    # connection ends, and every body is closed, sent or not.
    import glammp.filestore.Filestore
    from services.core.dispatch import Mount
    from services.core.streams import StreamedBody

    blob = bytes(range(256)) * 1024 + b"tail"
    closed: list[str] = []

    class Body(StreamedBody):
        def __init__(self, key: str) -> None:
            super().__init__(len(blob))
            self.key = key

        def chunks(self):
            for at in range(0, len(blob), 50_000):
                if self.key == "fails" and at >= 100_000:
                    raise RuntimeError("the source went away")
                gevent.sleep(0)  # the reply's first bytes are out before the rest is read
                yield blob[at : at + 50_000]

        def close(self) -> None:
            closed.append(self.key)

    class Files:
        def fetch(self, domain: str, key: str, opts: object) -> object:
            return Body(key)

    proc = serve([Mount("Filestore", glammp.filestore.Filestore, Files(), "filestore")])
    host, port = proc.server.address
    for dialect in DIALECTS:
        with client(host, port, dialect, "Filestore") as c:
            assert c.fetch("d", "whole", None) == blob
    assert closed == ["whole"] * len(DIALECTS)
    with client(host, port, "framed-binary", "Filestore") as c:
        with pytest.raises(TTransportException):
            c.fetch("d", "fails", None)
    with client(host, port, "framed-compact", "Filestore") as c:
        # Not streamed: the failure is the call's, before anything was written.
        with pytest.raises(ServiceError) as e:
            c.fetch("d", "fails", None)
        assert e.value.code == ErrorCode.INTERNAL
        assert c.fetch("d", "after", None) == blob
    with client(host, port, "framed-binary", "Filestore") as c:
        assert c.fetch("d", "again", None) == blob
    assert closed.count("fails") == 2 and closed[-1] == "again"


@pytest.mark.parametrize("dialect", ["framed-binary", "framed-compact", "unframed-binary"])
def test_replies_carry_the_bare_method_name(server, dialect):
    # Apache's TMultiplexedProcessor answers "getStatus", not "Base:getStatus"; Go's and
    # Node's generated clients check the name and reject anything else.
    from thrift.protocol.TProtocol import TProtocolBase

    host, port = server.server.address
    names: list[str] = []
    with client(host, port, dialect, "Cache") as c:
        proto: TProtocolBase = c._iprot
        read = proto.readMessageBegin

        def spy() -> tuple:
            name, mtype, seqid = read()
            names.append(name)
            return name, mtype, seqid

        proto.readMessageBegin = spy  # type: ignore[method-assign]
        c.getStatus()
        c.get("k", None)
    assert names == ["getStatus", "get"]


def test_a_deadline_that_fired_does_not_cut_the_next_call_short(server):
    # Timers are reused per connection; a fired one must not fire again at once.
    host, port = server.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        for _ in range(3):
            with pytest.raises(ServiceError) as e:
                c.get("sleep:1.2", None)  # the method's deadline is 1000 ms
            assert e.value.code == ErrorCode.TIMEOUT
            assert c.get("sleep:0.3", None).value == b"sleep:0.3"


def _read_get_reply(proto: TBinaryProtocol) -> tuple[int, bytes]:
    name, _, sid = proto.readMessageBegin()
    result = glammp.cache.Cache.get_result()
    result.read(proto)
    proto.readMessageEnd()
    assert name == "get" and result.err is None
    return sid, result.success.value


def test_pipelined_frames_are_served_concurrently_and_answered_as_each_finishes(server):
    # The first call waits for the second: served one after the other, it would end in
    # its 1000 ms deadline (504) before the second ever ran. The calls behind it are not
    # held up: their replies come first, each with its own seqid.
    host, port = server.server.address
    keys = ["wait:p1", "set:p1", "plain"]
    frames = b"".join(_get_frame(key, seqid) for seqid, key in enumerate(keys, start=7))
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(frames)
        proto = TBinaryProtocol(TFramedTransport(_SocketTransport(s)))
        replies = [_read_get_reply(proto) for _ in keys]
    assert sorted(replies) == [(seqid, key.encode()) for seqid, key in enumerate(keys, start=7)]
    assert replies[-1] == (7, b"wait:p1")


def test_a_slow_call_does_not_hold_up_a_later_request_on_its_connection(server):
    host, port = server.server.address
    with socket.create_connection((host, port), timeout=5) as s:
        proto = TBinaryProtocol(TFramedTransport(_SocketTransport(s)))
        s.sendall(_get_frame("wait:p2", 1))
        s.sendall(_get_frame("plain", 2))
        assert _read_get_reply(proto) == (2, b"plain")  # while the first one still waits
        s.sendall(_get_frame("set:p2", 3))
        assert sorted(_read_get_reply(proto) for _ in range(2)) == [(1, b"wait:p2"),
                                                                   (3, b"set:p2")]


def _get_frame(key: str, seqid: int) -> bytes:
    buf = TMemoryBuffer()
    proto = TMultiplexedProtocol(TBinaryProtocol(buf), "Cache")
    proto.writeMessageBegin("get", TMessageType.CALL, seqid)
    glammp.cache.Cache.get_args(key=key, opts=None).write(proto)
    proto.writeMessageEnd()
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


class _SocketTransport(TTransportBase):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, sz: int) -> bytes:
        return self.sock.recv(sz)
