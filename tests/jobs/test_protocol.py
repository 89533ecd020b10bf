"""The packet codec and the admin text parsers, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.jobs import protocol as p


def test_encode_matches_gearmand_bytes() -> None:
    # The exact bytes captured from libgearman for SUBMIT_JOB("echo", "u1", "hello").
    assert p.encode(p.SUBMIT_JOB, b"echo", b"u1", b"hello") == bytes.fromhex(
        "00524551000000070000000d6563686f0075310068656c6c6f")


def test_encode_refuses_nul_in_a_middle_argument() -> None:
    with pytest.raises(ValueError):
        p.encode(p.SUBMIT_JOB, b"ec\0ho", b"u", b"x")


def test_last_argument_keeps_nul_bytes() -> None:
    reader = p.PacketReader(p.REQ)
    payload = b"\0a\0\0b\0"
    (packet,) = reader.feed(p.encode(p.SUBMIT_JOB_BG, b"fn", b"u", payload))
    assert packet.type == p.SUBMIT_JOB_BG
    assert packet.args == (b"fn", b"u", payload)


def test_reader_reassembles_byte_by_byte() -> None:
    stream = (p.encode(p.JOB_CREATED, b"H:x:1", magic=p.RES)
              + p.encode(p.WORK_DATA, b"H:x:1", b"chunk\0", magic=p.RES)
              + p.encode(p.NOOP, magic=p.RES))
    reader = p.PacketReader(p.RES)
    out: list[p.Packet] = []
    for i in range(len(stream)):
        out += reader.feed(stream[i:i + 1])
    assert [q.type for q in out] == [p.JOB_CREATED, p.WORK_DATA, p.NOOP]
    assert out[1].args == (b"H:x:1", b"chunk\0")
    assert out[2].args == ()
    assert reader.buffered == 0


def test_work_fail_with_trailing_nul_is_the_bare_handle() -> None:
    body = b"H:vm:12\0"
    raw = p.HEADER.pack(p.RES, p.WORK_FAIL, len(body)) + body
    (packet,) = p.PacketReader(p.RES).feed(raw)
    assert packet.args == (b"H:vm:12",)


def test_short_body_pads_missing_arguments() -> None:
    raw = p.HEADER.pack(p.RES, p.WORK_COMPLETE, 5) + b"H:x:1"
    (packet,) = p.PacketReader(p.RES).feed(raw)
    assert packet.args == (b"H:x:1", b"")


def test_bad_magic_and_oversized_body_are_protocol_errors() -> None:
    with pytest.raises(p.ProtocolError):
        p.PacketReader(p.RES).feed(p.encode(p.NOOP, magic=p.REQ))
    with pytest.raises(p.ProtocolError):
        p.PacketReader(p.RES, max_body_bytes=10).feed(p.HEADER.pack(p.RES, p.WORK_DATA, 11))


def test_status_res_unique_has_six_arguments() -> None:
    raw = p.encode(p.STATUS_RES_UNIQUE, b"uniq", b"1", b"1", b"3", b"10", b"2", magic=p.RES)
    (packet,) = p.PacketReader(p.RES).feed(raw)
    assert packet.args == (b"uniq", b"1", b"1", b"3", b"10", b"2")


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_admin_status_lines(eol: str) -> None:
    reply = f"fn_a\t0\t0\t1{eol}fn_nobody\t4\t0\t0{eol}.{eol}".encode()
    lines = p.admin_lines(reply)
    assert lines is not None
    assert p.parse_status(lines) == [p.FunctionLine("fn_a", 0, 0, 1),
                                     p.FunctionLine("fn_nobody", 4, 0, 0)]


def test_admin_reply_incomplete_until_the_dot() -> None:
    assert p.admin_lines(b"fn_a\t0\t0\t1\n") is None
    assert p.admin_lines(b"fn_a\t0\t0\t1\n.") is None
    assert p.admin_lines(b".\n") == []


def test_admin_err_line_is_returned() -> None:
    assert p.admin_lines(b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n") == [
        "ERR UNKNOWN_COMMAND Unknown+server+commandshow"]


def test_prioritystatus_and_workers() -> None:
    lines = p.admin_lines(b"fn_nobody\t1\t2\t1\t0\n.\n")
    assert lines is not None
    assert p.parse_priority_status(lines) == [p.PriorityLine("fn_nobody", 1, 2, 1, 0)]
    lines = p.admin_lines(b"37 127.0.0.1 worker-1 : fn_b fn_a\n38 ::1 - :\n.\n")
    assert lines is not None
    assert p.parse_workers(lines) == [
        p.WorkerLine(37, "127.0.0.1", "worker-1", ("fn_b", "fn_a")),
        p.WorkerLine(38, "::1", "-", ()),
    ]


@pytest.mark.parametrize("line", ["fn\t1\t2", "fn\tx\t0\t0"])
def test_malformed_status_line(line: str) -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_status([line])


@given(st.lists(st.tuples(st.sampled_from([p.WORK_DATA, p.WORK_COMPLETE, p.JOB_ASSIGN_UNIQ,
                                           p.STATUS_RES, p.NOOP]),
                          st.binary(max_size=200)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_any_packets_survive_any_split(packets: list[tuple[int, bytes]], cuts: list[int]) -> None:
    expected = []
    stream = b""
    for ptype, last in packets:
        n = p.ARG_COUNT[ptype]
        args = tuple(f"a{i}".encode() for i in range(n - 1)) + ((last,) if n else ())
        expected.append(p.Packet(ptype, args))
        stream += p.encode(ptype, *args, magic=p.RES)
    reader = p.PacketReader(p.RES)
    got: list[p.Packet] = []
    pos = 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        got += reader.feed(stream[pos:pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    assert got == expected
    assert reader.buffered == 0
