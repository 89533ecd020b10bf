"""FastLZ, pecl's value flags and compression, and the key rules, without a server."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glammp.cache.ttypes import ValueType
from services.cache import codec, fastlz
from services.core.errors import ServiceError


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([1, 2]))
def test_fastlz_round_trip(data: bytes, level: int) -> None:
    assert fastlz.decompress(fastlz.compress(data, level), len(data)) == data


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([b"abc", b"hello ", b"\x00" * 40, b"xyzzy" * 9]), max_size=400))
def test_fastlz_round_trip_repetitive(parts: list[bytes]) -> None:
    data = b"".join(parts)
    for level in (1, 2):
        packed = fastlz.compress(data, level)
        assert fastlz.decompress(packed, len(data)) == data
        if len(data) > 200:
            assert len(packed) < len(data)


def test_fastlz_level_marker_and_far_matches() -> None:
    block = os.urandom(20000)
    data = block * 5  # repeats 20000 bytes back: a level-2 far match
    assert fastlz.compress(b"abcdef", 1)[0] >> 5 == 0
    assert fastlz.compress(b"abcdef", 2)[0] >> 5 == 1
    packed = fastlz.compress(data)
    assert packed[0] >> 5 == 1  # >= 64 KiB input: level 2, as pecl chooses
    assert len(packed) < 21000
    assert fastlz.decompress(packed, len(data)) == data


def test_fastlz_rejects_corrupt_streams() -> None:
    with pytest.raises(fastlz.FastLZError):
        fastlz.decompress(b"\x05ab", 100)  # literal run past the end
    with pytest.raises(fastlz.FastLZError):
        fastlz.decompress(b"\x00a\x20\x05", 100)  # match 6 bytes before the start
    with pytest.raises(fastlz.FastLZError):
        fastlz.decompress(b"\x60", 100)  # level 4
    with pytest.raises(fastlz.FastLZError):
        fastlz.decompress(fastlz.compress(b"a" * 1000), 10)  # output bound


def test_encode_flags_like_pecl() -> None:
    assert codec.encode(b"hello") == (b"hello", 0)
    assert codec.encode(b"42", ValueType.LONG) == (b"42", 1)
    assert codec.encode(b"3.14", ValueType.DOUBLE) == (b"3.14", 2)
    assert codec.encode(b"", ValueType.BOOL) == (b"", 3)
    assert codec.encode(b"N;", ValueType.SERIALIZED) == (b"N;", 4)
    assert codec.encode(b"42", ValueType.LONG, user_flags=5) == (b"42", 0x50001)


def test_compression_threshold_and_factor() -> None:
    text = b"hello world " * 500
    payload, flags = codec.encode(text, compress=True)
    assert flags == 0x50 and struct.unpack("<I", payload[:4])[0] == len(text)
    assert codec.decode(payload, flags) == text
    payload, flags = codec.encode(text, compress=True, compression="zlib")
    assert flags == 0x30 and zlib.decompress(payload[4:]) == text
    assert codec.encode(b"x" * 1999, compress=True) == (b"x" * 1999, 0)  # below threshold
    noise = os.urandom(5000)
    assert codec.encode(noise, compress=True) == (noise, 0)  # ratio below 1.3: kept raw
    assert codec.encode(text, compress=False) == (text, 0)


def test_decode_corrupt_is_502() -> None:
    for payload, flags in ((b"\x01", 0x50), (b"\x10\0\0\0garbage", 0x30),
                           (b"\x10\0\0\0\x00a", 0x50), (b"\x05\0\0\0abc", 0x10)):
        with pytest.raises(ServiceError) as info:
            codec.decode(payload, flags, "k")
        assert info.value.code == 502


@pytest.mark.parametrize("vtype,good,bad", [
    (ValueType.LONG, [b"0", b"-7", b"9223372036854775807"], [b"", b"1.5", b" 1",
                                                              b"9223372036854775808"]),
    (ValueType.DOUBLE, [b"3.14", b"-1.5E-7", b"1", b"INF", b"NAN", b".5"], [b"", b"1,5", b"x"]),
    (ValueType.BOOL, [b"", b"1"], [b"0", b"true"]),
    (ValueType.JSON, [b'{"a":1}', b"[]", b"1"], [b"{", b""]),
    (ValueType.SERIALIZED, [b"N;"], [b""]),
])
def test_value_checks(vtype: int, good: list[bytes], bad: list[bytes]) -> None:
    for value in good:
        codec.check_value(value, vtype)
    for value in bad:
        with pytest.raises(ServiceError) as info:
            codec.check_value(value, vtype)
        assert info.value.code == 400


def test_key_rules() -> None:
    assert codec.check_key("k" * 250) == b"k" * 250
    assert codec.check_key("abc", b"p:") == b"p:abc"
    for key, prefix, rule in (("k" * 251, b"", "250"), ("k" * 249, b"ab", "250"),
                              ("", b"", "1-250"), ("a b", b"", "printable"),
                              ("a\x7f", b"", "printable"), ("é", b"", "printable"),
                              ("a\nb", b"", "printable")):
        with pytest.raises(ServiceError) as info:
            codec.check_key(key, prefix)
        assert info.value.code == 400 and rule in info.value.details["rule"]
    with pytest.raises(ValueError):
        codec.check_prefix("bad prefix")
