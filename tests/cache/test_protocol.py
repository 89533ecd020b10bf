"""Reply parsing of `Connection` against a scripted socket (no server): replies split at
every byte boundary, error replies, and what each failure means for the stream."""

from __future__ import annotations

import time

import pytest

from services.cache.protocol import (
    Connection,
    ConnectionLost,
    ProtocolError,
    ReadTimeout,
    ServerReplyError,
    storage_command,
)


class ScriptedSocket:
    """Returns the scripted chunks from recv, one per call; records what was sent. It plays
    both the gevent socket and the raw one under it (`_sock`), which Connection sends on."""

    _read_event = None

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = b""
        self._sock = self

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def _wait(self, _event: object) -> None:  # what sockets.wait_readable calls
        pass

    def settimeout(self, _t: float) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, _n: int) -> bytes:
        if not self.chunks:
            raise TimeoutError
        return self.chunks.pop(0)

    def close(self) -> None:
        pass


def conn(*chunks: bytes) -> Connection:
    return Connection(ScriptedSocket(list(chunks)), "fake:1")  # type: ignore[arg-type]


def deadline() -> float:
    return time.monotonic() + 5


GETS_REPLY = (b"VALUE a 0 3 11\r\nx\r\n\r\nVALUE bb 80 0 12\r\n\r\n"
              b"VALUE c 4294967295 5\r\n12345\r\nEND\r\n")
EXPECTED = {b"a": (0, b"x\r\n", 11), b"bb": (80, b"", 12), b"c": (4294967295, b"12345", 0)}


def test_values_split_at_every_byte() -> None:
    for cut in range(1, len(GETS_REPLY)):
        c = conn(GETS_REPLY[:cut], GETS_REPLY[cut:])
        assert c.retrieve(b"gets", [b"a", b"bb", b"c"], deadline()) == EXPECTED
    one_byte_at_a_time = conn(*[GETS_REPLY[i : i + 1] for i in range(len(GETS_REPLY))])
    assert one_byte_at_a_time.read_values(deadline()) == EXPECTED


def test_large_value_and_next_reply_in_one_buffer() -> None:
    value = bytes(range(256)) * 4000
    c = conn(b"VALUE big 0 %d\r\n" % len(value) + value[:5000],
             value[5000:] + b"\r\nEND\r\nSTORED\r\n")
    assert c.read_values(deadline()) == {b"big": (0, value, 0)}
    assert c.reply(deadline()) == b"STORED"


def test_error_replies() -> None:
    with pytest.raises(ServerReplyError) as info:
        conn(b"SERVER_ERROR object too large for cache\r\n").reply(deadline())
    assert info.value.reusable
    with pytest.raises(ServerReplyError) as info:
        conn(b"CLIENT_ERROR bad data chunk\r\n").reply(deadline())
    assert not info.value.reusable
    with pytest.raises(ServerReplyError):
        conn(b"ERROR\r\n").read_values(deadline())
    with pytest.raises(ProtocolError):
        conn(b"STORED\r\n").read_values(deadline())
    with pytest.raises(ProtocolError):
        conn(b"VALUE a x 1\r\nx\r\nEND\r\n").read_values(deadline())
    with pytest.raises(ProtocolError):
        conn(b"VALUE a 0 1\r\nxyEND\r\n").read_values(deadline())
    with pytest.raises(ReadTimeout):
        conn(b"VALUE a 0 10\r\nabc").read_values(deadline())
    with pytest.raises(ConnectionLost):
        conn(b"VALUE a 0 10\r\nabc", b"").read_values(deadline())


def test_pipeline_keeps_reusable_refusals_in_place() -> None:
    c = conn(b"STORED\r\nSERVER_ERROR object too large for cache\r\nNOT_STORED\r\n")
    cmds = [storage_command(b"set", b"k%d" % i, 0, 0, b"v") for i in range(3)]
    replies = c.pipeline(cmds, deadline())
    assert replies[0] == b"STORED" and replies[2] == b"NOT_STORED"
    assert isinstance(replies[1], ServerReplyError)
    assert c.sock.sent == b"".join(cmds)  # type: ignore[attr-defined]
    assert storage_command(b"cas", b"k", 5, 10, b"ab", 99) == b"cas k 5 10 2 99\r\nab\r\n"


def test_arithmetic_and_stats() -> None:
    assert conn(b"VA 2\r\n13\r\n").arithmetic(b"ma c v", deadline()) == 13
    assert conn(b"VA 20\r\n0                   \r\n").arithmetic(b"ma c v", deadline()) == 0
    assert conn(b"NF\r\n").arithmetic(b"ma c v", deadline()) is None
    with pytest.raises(ServerReplyError):
        conn(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n").arithmetic(
            b"ma c v", deadline())
    stats = conn(b"STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\n").stats(b"", deadline())
    assert stats == {"pid": "1", "version": "1.6.18"}
    assert conn(b"RESET\r\n").stats(b"reset", deadline()) == {"reply": "RESET"}
    assert conn(b"PREFIX a get 1\r\nEND\r\n").stats(b"detail dump", deadline()) == {
        "PREFIX a": "get 1"}
    assert conn(b"VERSION 1.6.18\r\n").version(deadline()) == "1.6.18"


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_meta_replies(split: int) -> None:
    raw = b"VA 3 c17 f5 t-1 W X\r\nabc\r\nEN\r\nHD c9\r\n"
    sock = ScriptedSocket([raw[i:i + split] for i in range(0, len(raw), split)])
    conn = Connection(sock, "fake:1")  # type: ignore[arg-type]
    lease = conn.meta(b"mg k v c f t N30", deadline())
    assert sock.sent == b"mg k v c f t N30\r\n"
    assert (lease.status, lease.value) == (b"VA", b"abc")
    assert (lease.number(b"c"), lease.number(b"f"), lease.number(b"t")) == (17, 5, -1)
    assert lease.flag(b"W") == b"" and lease.flag(b"X") == b"" and lease.flag(b"Z") is None
    miss = conn.meta(b"mg k v", deadline())
    assert (miss.status, miss.value, miss.flags) == (b"EN", None, {})
    assert conn.meta(b"md k q", deadline()).number(b"c") == 9


def test_meta_reply_out_of_sync() -> None:
    conn = Connection(ScriptedSocket([b"STORED\r\n"]), "fake:1")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        conn.meta(b"mg k v", deadline())
    conn = Connection(ScriptedSocket([b"VA x\r\n"]), "fake:1")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        conn.meta(b"mg k v", deadline())


def test_whole_replies_parsed_in_bulk_match_line_by_line() -> None:
    plain = {b"k%d" % i: (i, b"v" * i, 100 + i) for i in range(50)}
    # Values that look like reply lines: a fake VALUE header and block, a fake END.
    tricky = {b"a": (0, b"1\r\nVALUE b 0 1 7\r\n2", 5), b"b": (1, b"END", 6),
              b"c": (2, b"x\r\nEND", 7), b"d": (3, b"", 8)}
    for values in (plain, tricky, {}):
        reply = b"".join(b"VALUE %s %d %d %d\r\n%s\r\n" % (k, f, len(v), cas, v)
                         for k, (f, v, cas) in values.items()) + b"END\r\n"
        assert conn(reply).read_values(deadline()) == values
        for cut in range(1, len(reply), 7):
            assert conn(reply[:cut], reply[cut:]).read_values(deadline()) == values
