"""Keys and values exactly as pecl/memcached writes them, so PHP and the service share items.

Flags (32 bits, pecl/memcached 3.x layout):

=========  ===================================================================
bits 0-3   the PHP type: STRING 0, LONG 1, DOUBLE 2, BOOL 3, SERIALIZED 4,
           IGBINARY 5, JSON 6, MSGPACK 7 (`glammp.cache.ttypes.ValueType`)
bits 4-15  pecl's internal flags << 4: COMPRESSED 1, ZLIB 2, FASTLZ 4
bits 16-31 pecl's OPT_USER_FLAGS, 0..65535
=========  ===================================================================

A compressed payload is the original length as a 4-byte little-endian integer, then a zlib
stream (zlib's ``compress()``) or a FastLZ stream. Writes compress like pecl: only payloads
of at least the threshold (pecl's ini default 2000 bytes), and the compressed copy is kept
only when ``original > compressed * 1.3``. FastLZ is pure Python here, so data that zlib at
its fastest level cannot shrink by that factor is stored raw without trying FastLZ (the same
outcome pecl reaches after compressing).

Keys follow the text protocol as libmemcached checks it: 1-250 bytes *including* the pool's
prefix (pecl does not count the prefix and lets memcached refuse it; counting it turns that
into a clear 400), every byte printable ASCII (0x21-0x7E). Non-ASCII keys are refused like
pecl's text protocol refuses them (libmemcached's ``isgraph`` test): a key PHP cannot write
over the text protocol is not one the service should create. Every refusal is
ServiceError(400) naming the key and the rule.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

from glammp.cache.ttypes import ValueType
from services.cache import fastlz
from services.core import errors

#: Longest key memcached's text protocol accepts, prefix included (bytes).
MAX_KEY_BYTES = 250
#: Longest pool prefix (libmemcached's MEMCACHED_PREFIX_KEY_MAX_SIZE - 1), bytes.
MAX_PREFIX_BYTES = 127
#: pecl's ini memcached.compression_threshold (bytes).
DEFAULT_COMPRESSION_THRESHOLD = 2000
#: pecl's ini memcached.compression_factor.
COMPRESSION_FACTOR = 1.3
#: Largest value a compressed payload may claim to expand to (bytes); bigger claims are 502.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

TYPE_MASK = 0xF
FLAG_COMPRESSED = 1 << 4
FLAG_ZLIB = 2 << 4
FLAG_FASTLZ = 4 << 4
#: glammp's own internal-flag bits (pecl uses bits 4-7 of the internal range): the item is a
#: large-value manifest (`services.cache.largevalue`), or its payload starts with a read-through
#: envelope (`pack_envelope`). pecl reads such items as their type's raw bytes.
FLAG_ENVELOPE = 1 << 13
FLAG_LARGE = 1 << 14
#: The bits Item.flags never shows (they describe glammp's storage, not the value).
INTERNAL_FLAGS = FLAG_ENVELOPE | FLAG_LARGE
USER_FLAGS_SHIFT = 16
MAX_USER_FLAGS = 0xFFFF

COMPRESSION_TYPES = ("fastlz", "zlib")

_LEN = struct.Struct("<I")
#: Envelope: magic, recompute cost (delta) in ms, expiry as Unix time in ms (0: never).
_ENVELOPE = struct.Struct(">4sIQ")
ENVELOPE_MAGIC = b"GLE1"
_LONG = re.compile(rb"-?[0-9]+\Z")
_DOUBLE = re.compile(rb"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z|-?INF\Z|NAN\Z")
_PRINTABLE = re.compile(rb"[\x21-\x7e]+\Z")
#: The bytes a key may contain (isgraph in the C locale).
PRINTABLE_BYTES = bytes(range(0x21, 0x7F))


def check_key(key: str, prefix: bytes = b"", what: str = "key") -> bytes:
    """The bytes sent for `key` (prefix + key); ServiceError(400) naming the key and the rule."""
    raw = key.encode("utf-8", "surrogatepass")
    if not raw:
        raise errors.bad_request(f"{what} is empty", argument=what, rule="1-250 bytes")
    if len(prefix) + len(raw) > MAX_KEY_BYTES:
        raise errors.bad_request(
            f"{what} {key[:40]!r}... is {len(raw)} bytes; with the prefix it exceeds "
            f"{MAX_KEY_BYTES}",
            argument=what,
            key=key[:256],
            rule=f"at most {MAX_KEY_BYTES} bytes including the pool prefix",
        )
    if raw.translate(None, PRINTABLE_BYTES):
        raise errors.bad_request(
            f"{what} {key!r} has a space, control or non-ASCII character",
            argument=what,
            key=key,
            rule="printable ASCII only (0x21-0x7E), as the text protocol and pecl require",
        )
    return prefix + raw


def check_prefix(prefix: str) -> bytes:
    """A pool prefix as bytes; ValueError (a config error) when memcached could not take it."""
    raw = prefix.encode()
    if raw and not _PRINTABLE.match(raw):
        raise ValueError(f"prefix {prefix!r} must be printable ASCII without spaces")
    if len(raw) > MAX_PREFIX_BYTES:
        raise ValueError(f"prefix is longer than {MAX_PREFIX_BYTES} bytes")
    return raw


def check_value(value: bytes, vtype: int) -> None:
    """ServiceError(400) when `value` is not what PHP would write for `vtype`."""
    if vtype == ValueType.STRING:
        return
    if vtype == ValueType.LONG:
        if not _LONG.match(value) or not -(2**63) <= int(value) < 2**63:
            raise errors.bad_request(
                "a LONG value must be decimal text of a 64-bit integer", argument="value",
                rule="-?[0-9]+ within int64",
            )
    elif vtype == ValueType.DOUBLE:
        if not _DOUBLE.match(value):
            raise errors.bad_request(
                "a DOUBLE value must be decimal float text", argument="value",
                rule="e.g. 3.14, -1.5E-7, INF, NAN",
            )
    elif vtype == ValueType.BOOL:
        if value not in (b"", b"1"):
            raise errors.bad_request(
                'a BOOL value is "1" (true) or empty (false)', argument="value", rule="'1' or ''"
            )
    elif vtype == ValueType.JSON:
        try:
            json.loads(value)
        except ValueError:
            raise errors.bad_request(
                "a JSON value must be valid JSON", argument="value", rule="RFC 8259"
            ) from None
    elif vtype in (ValueType.SERIALIZED, ValueType.IGBINARY, ValueType.MSGPACK):
        if not value:
            raise errors.bad_request(
                "a serialized value cannot be empty", argument="value", rule="non-empty"
            )
    else:
        raise errors.bad_request(
            f"unknown value type {vtype}", argument="type", rule="a ValueType (0-7)"
        )


def check_user_flags(user_flags: int) -> None:
    if not 0 <= user_flags <= MAX_USER_FLAGS:
        raise errors.bad_request(
            f"user_flags {user_flags} out of range", argument="user_flags", rule="0..65535"
        )


def encode(
    value: bytes,
    vtype: int = ValueType.STRING,
    user_flags: int = 0,
    compress: bool = False,
    compression: str = "fastlz",
    threshold: int = DEFAULT_COMPRESSION_THRESHOLD,
) -> tuple[bytes, int]:
    """(payload, flags) for a value of PHP type `vtype`, checked first (ServiceError 400)."""
    check_value(value, vtype)
    check_user_flags(user_flags)
    flags = (vtype & TYPE_MASK) | (user_flags << USER_FLAGS_SHIFT)
    if compress and len(value) >= threshold:
        packed = _compress(value, compression)
        if packed is not None:
            return packed, flags | FLAG_COMPRESSED | (
                FLAG_ZLIB if compression == "zlib" else FLAG_FASTLZ
            )
    return value, flags


def _compress(value: bytes, compression: str) -> bytes | None:
    """The compressed payload with its length header, or None when pecl would keep it raw."""
    quick = zlib.compress(value, 1)
    if len(value) <= len(quick) * COMPRESSION_FACTOR:
        return None
    body = zlib.compress(value) if compression == "zlib" else fastlz.compress(value)
    if len(value) <= len(body) * COMPRESSION_FACTOR:
        return None
    return _LEN.pack(len(value)) + body


def is_compressed(flags: int) -> bool:
    return bool(flags & FLAG_COMPRESSED)


def decode(payload: bytes, flags: int, key: str = "") -> bytes:
    """The value bytes of an item, decompressed when its flags say it is compressed.
    ServiceError(502) naming the key when the compressed payload is corrupt."""
    if not flags & FLAG_COMPRESSED:
        return payload
    if len(payload) < 4:
        raise errors.bad_gateway(
            f"item {key!r} is flagged compressed but has no length header", key=key
        )
    (size,) = _LEN.unpack_from(payload)
    if size > MAX_DECOMPRESSED_BYTES:
        raise errors.bad_gateway(f"item {key!r} claims {size} bytes uncompressed", key=key)
    body = payload[4:]
    try:
        if flags & FLAG_ZLIB:
            out = zlib.decompress(body)
        elif flags & FLAG_FASTLZ:
            out = fastlz.decompress(body, size)
        else:
            raise ValueError("no compression type flag")
    except (zlib.error, ValueError) as e:
        raise errors.bad_gateway(
            f"item {key!r} cannot be decompressed: {e}", key=key, flags=flags
        ) from None
    if len(out) != size:
        raise errors.bad_gateway(
            f"item {key!r} decompressed to {len(out)} bytes, header says {size}", key=key
        )
    return out


def value_type(flags: int) -> int:
    return flags & TYPE_MASK


def user_flags_of(flags: int) -> int:
    return (flags >> USER_FLAGS_SHIFT) & MAX_USER_FLAGS


def pack_envelope(payload: bytes, delta_ms: int, expiry_ms: int) -> bytes:
    """`payload` behind a read-through envelope: how long the value took to compute (ms,
    clamped to 32 bits) and when it expires (Unix ms, 0 = never), for XFetch."""
    return _ENVELOPE.pack(ENVELOPE_MAGIC, min(max(delta_ms, 0), 2**32 - 1), expiry_ms) + payload


def unpack_envelope(data: bytes, key: str = "") -> tuple[bytes, int, int]:
    """(payload, delta_ms, expiry_ms) of an enveloped item; ServiceError(502) if malformed."""
    if len(data) < _ENVELOPE.size or data[:4] != ENVELOPE_MAGIC:
        raise errors.bad_gateway(f"item {key!r} is flagged enveloped but has no envelope",
                                 key=key)
    _, delta_ms, expiry_ms = _ENVELOPE.unpack_from(data)
    return data[_ENVELOPE.size :], delta_ms, expiry_ms
