"""Fuzz: 10,000 malformed messages at the gateway while well-behaved callers keep calling.

The messages come from a seeded random generator (reproducible: the seed is printed on
failure) in eight families: random bytes, truncated messages, flipped bytes, wrong field
types, oversized and negative frame lengths, broken THeader frames and unframed garbage,
in binary and compact. Each is sent on its own connection, which is then half-closed, so
every case ends without waiting on a timer: the gateway answers, or closes, or sees EOF.

Passing means: no connection greenlet died of an unexpected exception, the gateway still
answers, and every call of the well-behaved callers succeeded meanwhile.
"""

from __future__ import annotations

import random
import socket
import struct

import gevent
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.TTransport import TMemoryBuffer

from gateway import wire
from glammp.base.ttypes import Status
from glammp.cache import Cache
from glammp.cache.ttypes import WriteOptions
from services.core import framing
from tests.core.dialects import client

MESSAGES = 10_000
SENDERS = 8
SEED = 20261128


def _valid(rng: random.Random, compact: bool) -> bytes:
    buf = TMemoryBuffer()
    proto = TCompactProtocol(buf) if compact else TBinaryProtocol(buf)
    c = Cache.Client(TMultiplexedProtocol(proto, rng.choice(["Cache", "Base", "Nope"])))
    c._seqid = rng.randrange(1 << 31)
    pick = rng.randrange(3)
    if pick == 0:
        c.send_get("k" * rng.randrange(1, 40), None)
    elif pick == 1:
        c.send_put("k", bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
                   WriteOptions(ttl=rng.randrange(100)))
    else:
        c.send_get_multi([f"k{i}" for i in range(rng.randrange(5))], None, True)
    return buf.getvalue()


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def malformed(rng: random.Random) -> bytes:
    """One malformed message, as bytes to put on a fresh connection."""
    family = rng.randrange(8)
    base = _valid(rng, compact=rng.random() < 0.5)
    if family == 0:  # random bytes in a frame
        return _framed(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    if family == 1:  # truncated message, frame length matching what is sent
        return _framed(base[: rng.randrange(1, len(base))])
    if family == 2:  # flipped bytes
        data = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return _framed(bytes(data))
    if family == 3:  # wrong field types: a field's type byte replaced after the header
        data = bytearray(base)
        at = rng.randrange(min(len(data) - 1, 20), len(data))
        data[at] = rng.choice([0, 1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 17, 255])
        return _framed(bytes(data))
    if family == 4:  # oversized or negative frame length, a few bytes of body
        size = rng.choice([-1, -(1 << 31), 1 << 30, 17 * 1024 * 1024, 0])
        return struct.pack(">i", size) + base[:10]
    if family == 5:  # broken THeader frames
        head = bytearray(b"\x0f\xff\x00\x00" + struct.pack(">i", 1) + b"\x00\x01")
        head += bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
        return _framed(bytes(head) + base[: rng.randrange(len(base))])
    if family == 6:  # unframed garbage after a plausible first byte
        first = rng.choice([b"\x80\x01", b"\x82", b"\x80\x01\x00\x01\xff\xff\xff\xff"])
        return first + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 100)))
    # valid frame, then trailing garbage inside the same frame
    return _framed(base + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))))


def _send(host: str, port: int, data: bytes) -> None:
    with socket.create_connection((host, port), timeout=30) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass


def test_ten_thousand_malformed_messages(gateway, upstreams):
    (addr, _), = upstreams(1)
    gw = gateway(upstreams={"Cache": [addr]}, deadlines_ms={"Cache": 500})
    host, port = gw.address
    rng = random.Random(SEED)
    cases = [malformed(rng) for _ in range(MESSAGES)]
    done = False
    good: list[int] = []

    def well_behaved(n: int) -> None:
        with client(host, port, "framed-binary" if n % 2 else "framed-compact", "Cache") as c:
            while not done and len(good) < 100_000:
                assert c.get(f"good-{n}", None).value == f"good-{n}".encode()
                good.append(n)

    def sender(k: int) -> None:
        for data in cases[k::SENDERS]:
            _send(host, port, data)

    callers = [gevent.spawn(well_behaved, n) for n in range(4)]
    gevent.joinall([gevent.spawn(sender, k) for k in range(SENDERS)], timeout=240,
                   raise_error=True)
    done = True
    gevent.joinall(callers, timeout=30, raise_error=True)
    assert len(good) > 0
    counters = gw.metrics.counters
    assert counters.get("gateway_internal_errors", 0) == 0, f"seed {SEED}"
    assert counters.get("malformed_messages", 0) > 0
    with client(host, port, "framed-binary", "Base") as c:
        assert c.getStatus() == Status.ALIVE


LIMITS = framing.Limits(1 << 20, 1 << 20, 10_000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([wire.BINARY_FIRST, wire.COMPACT_FIRST]))
def test_translation_fails_only_with_protocol_errors(data, first):
    payload = bytes([first]) + data
    try:
        header, out = wire.translate(payload, first, wire.BINARY_FIRST, LIMITS)
    except (wire.WireError, EOFError, ValueError, UnicodeDecodeError, OverflowError,
            struct.error, framing.FramingError) as e:
        assert e is not None
        return
    except Exception as e:  # the protocol errors Thrift raises
        assert type(e).__name__ in ("TProtocolException", "TTransportException"), repr(e)
        return
    # What translated must translate back to an equal message.
    back = wire.translate(out, wire.BINARY_FIRST, first, LIMITS)[1]
    again = wire.translate(back, first, wire.BINARY_FIRST, LIMITS)[1]
    assert again == out and header.name == wire.parse_binary(out).name
