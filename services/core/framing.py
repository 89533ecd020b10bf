"""Which dialect a connection speaks, and THeader frames.

One port serves every combination a Thrift caller may use; the first bytes tell which:

==============================  ===========================================================
first bytes                     dialect
==============================  ===========================================================
``80 01``                       unframed binary (strict)
``82``                          unframed compact
4-byte length, then ``80 01``   framed binary
4-byte length, then ``82``      framed compact
4-byte length, then ``0F FF``   THeader (binary or compact inside, optional zlib transform)
==============================  ===========================================================

The reply is written in the dialect of the request. THeader info headers (e.g. the caller's
`Deadline-Budget`) are handed to the dispatcher.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TCompactProtocol import TCompactProtocolAccelerated
from thrift.protocol.TProtocol import TProtocolBase, TProtocolException
from thrift.transport.TTransport import TTransportBase

BINARY_FIRST = 0x80
COMPACT_FIRST = 0x82
HEADER_MAGIC = b"\x0f\xff"

#: THeader protocol ids.
PROTOCOL_BINARY = 0
PROTOCOL_COMPACT = 2
#: THeader transform id of zlib, the only transform Thrift's runtimes implement.
TRANSFORM_ZLIB = 1
#: THeader info header type of key-value headers.
INFO_KEYVALUE = 1


class FramingError(Exception):
    """The bytes are not a Thrift dialect glammp serves; the connection is closed."""


def is_unframed(first: int) -> bool:
    return first in (BINARY_FIRST, COMPACT_FIRST)


@dataclass(frozen=True)
class Limits:
    """Size limits applied to every decoded message, in bytes / elements."""

    max_frame_bytes: int
    max_string_bytes: int
    max_container_items: int


def protocol_for(first: int, trans: TTransportBase, limits: Limits) -> TProtocolBase:
    """The accelerated protocol (C decoder when available) for a payload starting with `first`."""
    if first == BINARY_FIRST:
        return TBinaryProtocolAccelerated(
            trans,
            strictRead=True,
            string_length_limit=limits.max_string_bytes,
            container_length_limit=limits.max_container_items,
        )
    if first == COMPACT_FIRST:
        return TCompactProtocolAccelerated(
            trans,
            string_length_limit=limits.max_string_bytes,
            container_length_limit=limits.max_container_items,
        )
    raise FramingError(f"not a Thrift binary or compact message (first byte 0x{first:02x})")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise FramingError("truncated or overlong varint in THeader")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_varint(buf, pos)
    if pos + n > len(buf):
        raise FramingError("THeader string runs past the header")
    return buf[pos : pos + n].decode("utf-8", "replace"), pos + n


@dataclass
class HeaderFrame:
    """A decoded THeader frame: what is needed to answer in kind."""

    flags: int
    seqid: int
    protocol: int
    transforms: list[int]
    headers: dict[str, str] = field(default_factory=dict)
    payload: bytes = b""


def decode_header_frame(frame: bytes, max_payload: int) -> HeaderFrame:
    """Parses a THeader frame (without its 4-byte length). Raises FramingError."""
    if len(frame) < 10 or frame[:2] != HEADER_MAGIC:
        raise FramingError("not a THeader frame")
    flags, seqid, words = struct.unpack_from(">HiH", frame, 2)
    end = 10 + words * 4
    if end > len(frame):
        raise FramingError("THeader header is larger than its frame")
    protocol, pos = _read_varint(frame, 10)
    if protocol not in (PROTOCOL_BINARY, PROTOCOL_COMPACT):
        raise FramingError(f"THeader protocol id {protocol} is not served")
    count, pos = _read_varint(frame, pos)
    transforms = []
    for _ in range(count):
        t, pos = _read_varint(frame, pos)
        if t != TRANSFORM_ZLIB:
            raise FramingError(f"THeader transform {t} is not served")
        transforms.append(t)
    headers: dict[str, str] = {}
    while pos < end:
        kind, pos = _read_varint(frame, pos)
        if kind != INFO_KEYVALUE:
            break  # padding (0) or a header type we do not read
        n, pos = _read_varint(frame, pos)
        for _ in range(n):
            k, pos = _string(frame, pos)
            v, pos = _string(frame, pos)
            headers[k] = v
    payload = frame[end:]
    if transforms:
        d = zlib.decompressobj()
        payload = d.decompress(payload, max_payload)
        if d.unconsumed_tail:
            raise FramingError("THeader payload inflates beyond the frame limit")
    return HeaderFrame(flags, seqid, protocol, transforms, headers, payload)


def encode_header_frame(req: HeaderFrame, payload: bytes) -> bytes:
    """A THeader reply frame (with its length) answering `req` in its protocol and transforms."""
    if req.transforms:
        payload = zlib.compress(payload)
    head = bytearray(_varint(req.protocol))
    head += _varint(len(req.transforms))
    for t in req.transforms:
        head += _varint(t)
    head += b"\x00" * (-len(head) % 4)
    body = struct.pack(">2sHiH", HEADER_MAGIC, req.flags, req.seqid, len(head) // 4)
    total = len(body) + len(head) + len(payload)
    return struct.pack(">i", total) + body + bytes(head) + payload


__all__ = [
    "FramingError",
    "HeaderFrame",
    "Limits",
    "TProtocolException",
    "decode_header_frame",
    "encode_header_frame",
    "is_unframed",
    "protocol_for",
]
