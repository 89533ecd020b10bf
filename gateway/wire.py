"""Thrift messages as the gateway sees them: a header to route by, a body it never needs.

* `parse_binary` reads a strict-binary message header (type, name, seqid) without touching the
  body; `binary_message` writes one back around the same body bytes, with a new name or
  seqid. This is the passthrough path: same protocol on both sides, body bytes untouched.
* `copy_message` walks one message from any protocol to any other generically (the way
  `TProtocol.skip` walks, but writing what it reads), so a compact or unframed caller can
  reach a binary upstream without the gateway knowing the IDL.
* `error_reply` builds the reply every generated client raises as `ServiceError`: the
  exception as field 1 of `<method>_result`, which every glammp method declares first.

Malformed input raises `WireError` (or a Thrift protocol/transport error from the walker);
nothing here touches a socket.
"""

from __future__ import annotations

import struct

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolBase, TProtocolException
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer, TTransportBase

from glammp.common.ttypes import ServiceError
from services.core import framing

BINARY_FIRST = framing.BINARY_FIRST
COMPACT_FIRST = framing.COMPACT_FIRST
#: Structs nested deeper than this are refused (a guard against stack exhaustion).
MAX_DEPTH = 64

_I32 = struct.Struct(">i")
_VALID_TYPES = frozenset(
    (TType.BOOL, TType.BYTE, TType.I16, TType.I32, TType.I64, TType.DOUBLE, TType.STRING,
     TType.STRUCT, TType.MAP, TType.SET, TType.LIST)
)


class WireError(Exception):
    """The bytes are not a Thrift message the gateway can route."""


class Header:
    """A message header: `mtype` (TMessageType), `name` as sent ("Cache:get"), `seqid`, and
    where the body starts in the payload (`body_at`, binary payloads only)."""

    __slots__ = ("mtype", "name", "seqid", "body_at")

    def __init__(self, mtype: int, name: str, seqid: int, body_at: int) -> None:
        self.mtype = mtype
        self.name = name
        self.seqid = seqid
        self.body_at = body_at


def parse_binary(payload: bytes) -> Header:
    """The header of a strict-binary message; raises WireError when it is not one."""
    if len(payload) < 12 or payload[0] != 0x80 or payload[1] != 0x01:
        raise WireError("not a strict binary message")
    size = _I32.unpack_from(payload, 4)[0]
    end = 8 + size
    if size < 0 or end + 4 > len(payload):
        raise WireError("message name runs past the message")
    try:
        name = payload[8:end].decode()
    except UnicodeDecodeError:
        raise WireError("message name is not UTF-8") from None
    return Header(payload[3] & 0x07, name, _I32.unpack_from(payload, end)[0], end + 4)


def binary_seqid(payload: bytes) -> int:
    """The seqid of a strict-binary message (-1 when the header is cut short)."""
    if len(payload) < 12:
        return -1
    end = 8 + _I32.unpack_from(payload, 4)[0]
    if end < 8 or end + 4 > len(payload):
        return -1
    return int(_I32.unpack_from(payload, end)[0])


def binary_message(mtype: int, name: str, seqid: int, body: bytes | memoryview) -> bytes:
    """A strict-binary message around `body` (the bytes after the seqid), without framing."""
    raw = name.encode()
    return b"".join((bytes((0x80, 0x01, 0x00, mtype)), _I32.pack(len(raw)), raw,
                     _I32.pack(seqid), body))


def framed_message(mtype: int, name: str, seqid: int, body: bytes | memoryview) -> bytes:
    """`binary_message` with its 4-byte frame length, in one join."""
    raw = name.encode()
    return b"".join((_I32.pack(len(raw) + len(body) + 12), bytes((0x80, 0x01, 0x00, mtype)),
                     _I32.pack(len(raw)), raw, _I32.pack(seqid), body))


def rename_reply(reply: bytes, mtype: int, body_at: int, name: str, seqid: int,
                 framed: bool = False) -> bytes:
    """A binary `reply` of type `mtype` whose body starts at `body_at`, with another name
    and seqid, and with its frame length first when `framed`; the body is copied once."""
    raw = name.encode()
    body = memoryview(reply)[body_at:]
    size = len(raw) + len(body) + 12
    return b"".join(((_I32.pack(size) if framed else b""), bytes((0x80, 0x01, 0x00, mtype)),
                     _I32.pack(len(raw)), raw, _I32.pack(seqid), body))


def frame(payload: bytes) -> bytes:
    return _I32.pack(len(payload)) + payload


def protocol(first: int, trans: TTransportBase, limits: framing.Limits) -> TProtocolBase:
    """A plain (not accelerated) protocol for generic walking."""
    if first == BINARY_FIRST:
        return TBinaryProtocol(trans, strictRead=True,
                               string_length_limit=limits.max_string_bytes,
                               container_length_limit=limits.max_container_items)
    if first == COMPACT_FIRST:
        return TCompactProtocol(trans, string_length_limit=limits.max_string_bytes,
                                container_length_limit=limits.max_container_items)
    raise WireError(f"not a Thrift binary or compact message (first byte 0x{first:02x})")


def copy_message(iprot: TProtocolBase, oprot: TProtocolBase,
                 rename: str | None = None, seqid: int | None = None) -> Header:
    """Reads one message from `iprot` and writes it to `oprot`, optionally with another name
    and seqid; returns the header as read. The body is walked generically."""
    name, mtype, sid = iprot.readMessageBegin()
    if mtype not in (TMessageType.CALL, TMessageType.REPLY, TMessageType.EXCEPTION,
                     TMessageType.ONEWAY):
        raise WireError(f"message type {mtype} is not a Thrift message type")
    oprot.writeMessageBegin(rename if rename is not None else name, mtype,
                            seqid if seqid is not None else sid)
    copy_value(iprot, oprot, TType.STRUCT, 0)
    iprot.readMessageEnd()
    oprot.writeMessageEnd()
    return Header(mtype, name, sid, -1)


def read_header(first: int, payload: bytes, limits: framing.Limits) -> Header:
    """The header of a binary or compact payload (body_at is -1 for compact)."""
    if first == BINARY_FIRST:
        return parse_binary(payload)
    iprot = protocol(first, TMemoryBuffer(payload), limits)
    try:
        name, mtype, seqid = iprot.readMessageBegin()
    except (TProtocolException, EOFError, struct.error, UnicodeDecodeError) as e:
        raise WireError(f"bad message header: {e}") from None
    return Header(mtype, name, seqid, -1)


def translate(payload: bytes, src: int, dst: int, limits: framing.Limits,
              rename: str | None = None, seqid: int | None = None) -> tuple[Header, bytes]:
    """`payload` re-encoded from protocol `src` to `dst` (first bytes: BINARY_FIRST or
    COMPACT_FIRST), with an optional new name and seqid. Trailing bytes are refused."""
    itrans = TMemoryBuffer(payload)
    otrans = TMemoryBuffer()
    header = copy_message(protocol(src, itrans, limits), protocol(dst, otrans, limits),
                          rename, seqid)
    if itrans._buffer.tell() != len(payload):
        raise WireError("bytes after the end of the message")
    return header, otrans.getvalue()


def copy_value(iprot: TProtocolBase, oprot: TProtocolBase, ttype: int, depth: int) -> None:
    """Copies one value of `ttype` from `iprot` to `oprot`."""
    if ttype == TType.STRUCT:
        if depth > MAX_DEPTH:
            raise WireError(f"structs nested deeper than {MAX_DEPTH}")
        iprot.readStructBegin()
        oprot.writeStructBegin("s")
        while True:
            _, ftype, fid = iprot.readFieldBegin()
            if ftype == TType.STOP:
                break
            _check_type(ftype)
            oprot.writeFieldBegin("f", ftype, fid)
            copy_value(iprot, oprot, ftype, depth + 1)
            iprot.readFieldEnd()
            oprot.writeFieldEnd()
        iprot.readStructEnd()
        oprot.writeFieldStop()
        oprot.writeStructEnd()
    elif ttype == TType.STRING:
        oprot.writeBinary(iprot.readBinary())
    elif ttype == TType.I32:
        oprot.writeI32(iprot.readI32())
    elif ttype == TType.I64:
        oprot.writeI64(iprot.readI64())
    elif ttype == TType.BOOL:
        oprot.writeBool(iprot.readBool())
    elif ttype == TType.BYTE:
        oprot.writeByte(iprot.readByte())
    elif ttype == TType.I16:
        oprot.writeI16(iprot.readI16())
    elif ttype == TType.DOUBLE:
        oprot.writeDouble(iprot.readDouble())
    elif ttype == TType.LIST or ttype == TType.SET:
        read_begin, write_begin = ((iprot.readListBegin, oprot.writeListBegin)
                                   if ttype == TType.LIST
                                   else (iprot.readSetBegin, oprot.writeSetBegin))
        etype, size = read_begin()
        _check_size(size)
        if size:
            _check_type(etype)
        write_begin(etype, size)
        for _ in range(size):
            copy_value(iprot, oprot, etype, depth + 1)
        if ttype == TType.LIST:
            iprot.readListEnd()
            oprot.writeListEnd()
        else:
            iprot.readSetEnd()
            oprot.writeSetEnd()
    elif ttype == TType.MAP:
        ktype, vtype, size = iprot.readMapBegin()
        _check_size(size)
        if size:
            _check_type(ktype)
            _check_type(vtype)
        oprot.writeMapBegin(ktype, vtype, size)
        for _ in range(size):
            copy_value(iprot, oprot, ktype, depth + 1)
            copy_value(iprot, oprot, vtype, depth + 1)
        iprot.readMapEnd()
        oprot.writeMapEnd()
    else:
        raise WireError(f"unknown field type {ttype}")


def _check_type(ttype: int) -> None:
    if ttype not in _VALID_TYPES:
        raise WireError(f"unknown field type {ttype}")


def _check_size(size: int) -> None:
    if size < 0:
        raise WireError(f"negative container size {size}")


def error_reply(first: int, name: str, seqid: int, err: ServiceError) -> bytes:
    """A REPLY whose result struct holds `err` as field 1: what every generated client of a
    glammp method raises as ServiceError."""
    otrans = TMemoryBuffer()
    oprot = protocol(first, otrans, _NO_LIMITS)
    oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
    oprot.writeStructBegin("result")
    oprot.writeFieldBegin("err", TType.STRUCT, 1)
    err.write(oprot)
    oprot.writeFieldEnd()
    oprot.writeFieldStop()
    oprot.writeStructEnd()
    oprot.writeMessageEnd()
    return otrans.getvalue()


def application_error(first: int, name: str, seqid: int, kind: int, message: str) -> bytes:
    """An EXCEPTION message carrying TApplicationException(kind, message)."""
    otrans = TMemoryBuffer()
    oprot = protocol(first, otrans, _NO_LIMITS)
    oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
    TApplicationException(kind, message).write(oprot)
    oprot.writeMessageEnd()
    return otrans.getvalue()


_NO_LIMITS = framing.Limits(1 << 31, 1 << 31, 1 << 31)
