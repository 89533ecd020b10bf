"""The tracker line protocol, parsed and encoded without any server (reference B.1)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.mogilefs import wire


def test_command_is_leading_word_lower_cased() -> None:
    assert wire.parse_line(b"NOOP")[0] == "noop"  # type: ignore[index]
    assert wire.parse_line(b"  noop a=1")[0] == "noop"  # type: ignore[index]
    cmd, args = wire.parse_line(b"noop?x=1")  # type: ignore[misc]
    assert cmd == "noop"
    assert args.raw("?x") == b"1"
    assert wire.parse_line(b"???") is None
    assert wire.parse_line(b"\x00\x01\xff\xfe garbage") is None


def test_pairs_empty_or_zero_are_dropped() -> None:
    args = wire.parse_args(b"a=1&&0&b=2")
    assert dict(args.items()) == {"a": b"1", "b": b"2"}


def test_only_first_two_fields_kept() -> None:
    assert wire.parse_args(b"callid=a=b=c").raw("callid") == b"a"


def test_plus_and_percent_decoding() -> None:
    args = wire.parse_args(b"key=a+b%2Bc%41%zz&na%6De=v")
    assert args.raw("key") == b"a b+cA%zz"
    assert args.raw("name") == b"v"


def test_duplicate_names_joined_with_nul() -> None:
    assert wire.parse_args(b"domain=testdom&domain=other").raw("domain") == b"testdom\0other"


def test_missing_value_is_empty_and_flags() -> None:
    args = wire.parse_args(b"a&b=0&c=1&d=")
    assert args.has("a") and args.raw("a") == b""
    assert not args.flag("a") and not args.flag("b") and args.flag("c") and not args.flag("d")
    assert not args.flag("missing")
    assert wire.parse_args(b"n=12abc").int("n") == 12
    assert wire.parse_args(b"n=abc").int("n", 7) == 7


def test_eurl_leaves_safe_bytes_alone() -> None:
    assert wire.eurl("http://1.2.3.4:7500/dev1/0/000/000/0000000001.fid") == \
        "http://1.2.3.4:7500/dev1/0/000/000/0000000001.fid"
    assert wire.eurl("a b+c") == "a+b%2Bc"
    assert wire.eurl("MultipleHosts()") == "MultipleHosts%28%29"
    assert wire.eurl(b"\n\xff") == "%0A%FF"
    assert wire.eurl("x\\y,z-_") == "x\\y,z-_"
    assert wire.eurl(42) == "42"


def test_ok_encoding() -> None:
    assert wire.encode_ok({}) == b"OK \r\n"
    assert wire.encode_ok({"a": "x y", "b": None}) == b"OK a=x+y&b=\r\n"
    assert wire.encode_ok({"a": 1}, callid=b"7") == b"OK a=1&callid=7\r\n"


def test_err_encoding() -> None:
    assert wire.encode_err("no_domain") == b"ERR no_domain No+domain+provided\r\n"
    assert wire.encode_err("unknown_key") == b"ERR unknown_key unknown_key\r\n"
    assert wire.encode_err("no_domain", callid=b"42") == b"ERR no_domain No+domain+provided 42\r\n"
    assert wire.encode_err("unknown_command") == b"ERR unknown_command Unknown+server+command\r\n"


def test_decode_reply() -> None:
    assert wire.decode_reply(b"OK a=x+y&b=\r\n") == (True, {"a": b"x y", "b": b""})
    assert wire.decode_reply(b"ERR none_match No+keys\r\n") == (False, ("none_match", "No keys"))


@given(st.binary(min_size=1, max_size=64))
def test_values_round_trip_through_eurl(value: bytes) -> None:
    line = wire.encode_ok({"key": value, "other": "x"})
    assert line.count(b"\n") == 1 and line.count(b"&") == 1 and b" " not in line[3:]
    ok, args = wire.decode_reply(line)
    assert ok
    assert args == {"key": value, "other": b"x"}


@given(st.dictionaries(st.text(alphabet="abcdefgh_", min_size=1, max_size=8),
                       st.binary(min_size=1, max_size=32), max_size=5))
def test_request_args_round_trip(values: dict[str, bytes]) -> None:
    from services.mogilefs.client import encode_args

    parsed = wire.parse_args(encode_args(dict(values)).encode())
    assert dict(parsed.items()) == values
