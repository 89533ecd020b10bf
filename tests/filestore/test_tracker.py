"""The tracker client: reply parsing and encoding (no server), then pooling, failover and
interruption against a scripted tracker that answers the way MogileFS 2.73 does."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.server import StreamServer

from glammp.common.ttypes import ServiceError
from services.core.children import free_port
from services.filestore.tracker import Reply, Trackers, encode_args, error_for, parse_reply


def test_reply_arguments_are_parsed_by_name_in_any_order() -> None:
    a = parse_reply(b"OK path2=http://h:1/dev2/x.fid&paths=2&path1=http://h:1/dev1/x.fid")
    b = parse_reply(b"OK paths=2&path1=http://h:1/dev1/x.fid&path2=http://h:1/dev2/x.fid")
    assert isinstance(a, Reply) and a == b and a.int("paths") == 2
    assert parse_reply(b"OK ") == {}
    assert parse_reply(b"OK") == {}
    r = parse_reply(b"OK key_1=a+b%2Bc%0Ad&empty=&replpolicy=MultipleHosts%28%29")
    assert isinstance(r, Reply)
    assert r["key_1"] == b"a b+c\nd" and r.text("empty") == "" and r.int("missing", 7) == 7
    assert r.text("replpolicy") == "MultipleHosts()"
    with pytest.raises(ServiceError) as e:
        r.int("key_1")
    assert e.value.code == 502


def test_err_replies() -> None:
    assert parse_reply(b"ERR unknown_key unknown_key") == ("unknown_key", "unknown_key")
    assert parse_reply(b"ERR no_domain No+domain+provided 42") == ("no_domain",
                                                                    "No domain provided")
    assert parse_reply(b"ERR size_mismatch Expected%3A+4%3B+actual%3A+5") == (
        "size_mismatch", "Expected: 4; actual: 5")
    with pytest.raises(ServiceError) as e:
        parse_reply(b"HTTP/1.0 400 Bad Request")
    assert e.value.code == 502


def test_request_encoding() -> None:
    line = encode_args({"domain": "d", "key": "a b&c=d+e/ü", "class": None, "multi_dest": True,
                        "fid": 0, "raw": b"\x00\xff"})
    assert line == b"domain=d&key=a+b%26c%3Dd%2Be/%C3%BC&multi_dest=1&fid=0&raw=%00%FF"
    # What the tracker decodes is what was encoded.
    reply = parse_reply(b"OK " + line)
    assert isinstance(reply, Reply) and reply["key"] == "a b&c=d+e/ü".encode()


@pytest.mark.parametrize(("code", "status"), [
    ("unknown_key", 404), ("none_match", 404), ("no_devices", 507), ("unreg_domain", 400),
    ("no_key", 400), ("unreg_class", 400), ("key_exists", 409), ("class_has_files", 409),
    ("checksum_mismatch", 1002), ("failure", 502), ("size_mismatch", 502), ("whatever", 502),
])
def test_error_mapping(code: str, status: int) -> None:
    err = error_for(code, "text", "t:1")
    assert err.code == status and err.details["tracker_error"] == code
    assert not err.retryable


class FakeTracker:
    """A line server answering each request with `answer(line)` (None: hang up)."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.disconnects = 0
        self.server = StreamServer(("127.0.0.1", 0), self._serve)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def _serve(self, sock: socket.socket, _: Any) -> None:
        self.connections += 1
        reader = sock.makefile("rb")
        try:
            while line := reader.readline():
                reply = self.answer(line.rstrip(b"\r\n"))
                if reply is None:
                    break
                sock.sendall(reply)
        except OSError:
            pass
        finally:
            self.disconnects += 1
            reader.close()
            sock.close()

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[bytes], bytes | None]], FakeTracker]]:
    started: list[FakeTracker] = []

    def start(answer: Callable[[bytes], bytes | None]) -> FakeTracker:
        started.append(FakeTracker(answer))
        return started[-1]

    yield start
    for t in started:
        t.stop()


def test_stray_ok_after_key_exists_is_never_read_as_the_next_reply(fake: Any) -> None:
    def answer(line: bytes) -> bytes:
        if line.startswith(b"rename "):
            return b"ERR key_exists Target+key+name+already+exists%3B+can%27t+overwrite.\r\nOK \r\n"
        return b"OK fid=5&key=k\r\n"

    t = fake(answer)
    trackers = Trackers([t.address], pool_size=1)
    with pytest.raises(ServiceError) as e:
        trackers.call("rename", {"domain": "d", "from_key": "a", "to_key": "b"})
    assert e.value.code == 409
    assert trackers.call("file_info", {"domain": "d", "key": "k"})["fid"] == b"5"
    assert t.connections == 2
    trackers.close()


def test_pool_is_bounded_and_waits(fake: Any) -> None:
    def answer(line: bytes) -> bytes:
        gevent.sleep(0.05)
        return b"OK \r\n"

    t = fake(answer)
    trackers = Trackers([t.address], pool_size=1, pool_wait_s=30)
    jobs = [gevent.spawn(trackers.call, "noop") for _ in range(4)]
    gevent.joinall(jobs, raise_error=True)
    assert t.connections == 1  # four calls shared the one connection in turn
    short = Trackers([t.address], pool_size=1, pool_wait_s=0.001)
    first = gevent.spawn(short.call, "noop")
    gevent.sleep(0)
    with pytest.raises(ServiceError) as e:
        short.call("noop")
    assert e.value.code == 503 and e.value.retryable
    first.get()
    trackers.close()
    short.close()


def test_an_interrupted_call_closes_its_connection(fake: Any) -> None:
    def answer(line: bytes) -> bytes:
        if line.startswith(b"sleep"):
            gevent.sleep(0.5)
            return b"OK late=1\r\n"
        return b"OK fresh=1\r\n"

    t = fake(answer)
    trackers = Trackers([t.address], pool_size=1)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
        trackers.call("sleep")
    # The late reply is never taken for this call's: it runs on a new connection.
    assert trackers.call("noop") == {"fresh": b"1"}
    assert t.connections == 2
    trackers.close()


def test_dead_trackers_are_skipped_and_all_dead_is_503(fake: Any) -> None:
    t = fake(lambda line: b"OK \r\n")
    dead = f"127.0.0.1:{free_port()}"
    trackers = Trackers([dead, t.address], retry_dead_s=60)
    for _ in range(4):
        trackers.call("noop")
    assert trackers.nodes[0].dead_until > 0 and trackers.nodes[1].dead_until == 0
    t.stop()
    trackers.nodes[1].close()
    with pytest.raises(ServiceError) as e:
        trackers.call("noop")
    assert e.value.code == 503 and e.value.retryable
    trackers.close()


def test_a_dropped_write_is_502_and_a_dropped_read_moves_on(fake: Any) -> None:
    hangs = fake(lambda line: None)
    good = fake(lambda line: b"OK paths=0\r\n")
    trackers = Trackers([hangs.address, good.address])
    trackers._next = itertools.count(0, 2)  # always start at the first tracker
    with pytest.raises(ServiceError) as e:
        trackers.call("create_close", {"domain": "d"})
    assert e.value.code == 502 and not e.value.retryable
    assert trackers.call("get_paths", {"domain": "d", "key": "k"}, idempotent=True) == {
        "paths": b"0"}
    trackers.close()
