"""Message headers, rewriting, generic translation and synthesized errors (no sockets)."""

from __future__ import annotations

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from gateway import wire
from glammp.cache import Cache
from glammp.cache.ttypes import Entry, WriteOptions
from glammp.common.ttypes import ServiceError
from services.core import errors, framing

LIMITS = framing.Limits(1 << 20, 1 << 20, 10_000)


def _call(proto_cls: type, seqid: int = 5) -> bytes:
    buf = TMemoryBuffer()
    c = Cache.Client(TMultiplexedProtocol(proto_cls(buf), "Cache"))
    c._seqid = seqid
    entries = [Entry(key=f"k{i}", value=bytes([i]) * i, user_flags=i) for i in range(4)]
    c.send_put_multi(entries, WriteOptions(ttl=7, compress=True))
    return buf.getvalue()


def test_parse_and_rewrite_binary_header():
    payload = _call(TBinaryProtocol, seqid=42)
    h = wire.parse_binary(payload)
    assert (h.mtype, h.name, h.seqid) == (TMessageType.CALL, "Cache:put_multi", 42)
    assert wire.binary_seqid(payload) == 42
    out = wire.binary_message(h.mtype, "put_multi", 9, payload[h.body_at:])
    h2 = wire.parse_binary(out)
    assert (h2.name, h2.seqid) == ("put_multi", 9)
    assert out[h2.body_at:] == payload[h.body_at:]


@pytest.mark.parametrize("bad", [b"", b"\x80\x01\x00\x01", b"\x80\x01\x00\x01\x00\x00\x00\x09ab",
                                 b"\x82\x21\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"])
def test_parse_refuses_what_is_not_a_binary_message(bad):
    with pytest.raises(wire.WireError):
        wire.parse_binary(bad)


def test_compact_and_binary_translate_both_ways_exactly():
    binary, compact = _call(TBinaryProtocol), _call(TCompactProtocol)
    h, out = wire.translate(compact, wire.COMPACT_FIRST, wire.BINARY_FIRST, LIMITS)
    assert out == binary and (h.name, h.seqid) == ("Cache:put_multi", 5)
    assert wire.translate(binary, wire.BINARY_FIRST, wire.COMPACT_FIRST, LIMITS)[1] == compact
    renamed = wire.translate(compact, wire.COMPACT_FIRST, wire.BINARY_FIRST, LIMITS,
                             rename="put_multi", seqid=77)[1]
    assert (wire.parse_binary(renamed).name, wire.parse_binary(renamed).seqid) == ("put_multi", 77)


def test_translation_refuses_trailing_bytes_and_deep_nesting():
    with pytest.raises(wire.WireError):
        wire.translate(_call(TBinaryProtocol) + b"\x00", wire.BINARY_FIRST, wire.BINARY_FIRST,
                       LIMITS)
    # A struct holding a struct ... deeper than MAX_DEPTH.
    buf = TMemoryBuffer()
    TBinaryProtocol(buf).writeMessageBegin("x", TMessageType.CALL, 1)
    head = buf.getvalue() + b"\x0c\x00\x01" * (wire.MAX_DEPTH + 5)
    with pytest.raises(wire.WireError):
        wire.translate(head, wire.BINARY_FIRST, wire.COMPACT_FIRST, LIMITS)


@pytest.mark.parametrize("proto_cls,first", [(TBinaryProtocol, wire.BINARY_FIRST),
                                             (TCompactProtocol, wire.COMPACT_FIRST)])
def test_error_reply_is_raised_as_service_error_by_a_generated_client(proto_cls, first):
    err = errors.with_context(errors.unavailable("no instance", retry_after_ms=100), "gateway",
                              "rid-1")
    reply = wire.error_reply(first, "Cache:get", 3, err)
    client = Cache.Client(proto_cls(TMemoryBuffer(reply)))
    with pytest.raises(ServiceError) as e:
        client.recv_get()
    assert e.value == err


def test_application_error_is_raised_as_such():
    reply = wire.application_error(wire.COMPACT_FIRST, "Nope:x", 3,
                                   TApplicationException.UNKNOWN_METHOD, "unknown")
    client = Cache.Client(TCompactProtocol(TMemoryBuffer(reply)))
    with pytest.raises(TApplicationException) as e:
        client.recv_get()
    assert e.value.type == TApplicationException.UNKNOWN_METHOD
