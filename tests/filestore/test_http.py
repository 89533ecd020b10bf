"""The storage-node HTTP client (`storage.HttpConnection`) against scripted answers.

The real storage nodes in the other tests answer with Content-Length; these cover the rest
of what a node may send: chunked bodies, interim 100 answers, bodies ending at close,
HTTP/1.0, HEAD, and what must fail.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import gevent
import pytest

from glammp.common.ttypes import ServiceError
from services.filestore.storage import HttpConnection, HttpError, StaleConnection

CLOSE = b"<close>"


@pytest.fixture
def node() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A one-connection server on loopback: answers each request with the next scripted
    reply, closing the connection after one that ends with CLOSE; (port, replies to script,
    requests seen)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    replies: list[bytes] = []
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            buf = b""
            while replies:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                seen.append(head)
                reply = replies.pop(0)
                conn.sendall(reply.removesuffix(CLOSE))
                if reply.endswith(CLOSE):
                    return

    server = gevent.spawn(serve)
    yield listener.getsockname()[1], replies, seen
    server.kill()
    listener.close()


@pytest.fixture
def connect() -> Iterator[Callable[[int], HttpConnection]]:
    opened: list[HttpConnection] = []

    def open_one(port: int) -> HttpConnection:
        opened.append(HttpConnection("127.0.0.1", port, 2.0, 5.0))
        return opened[-1]

    yield open_one
    for c in opened:
        c.close()


def test_content_length_and_keep_alive(node, connect) -> None:
    port, replies, seen = node
    replies += [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 206 Partial\r\ncontent-length: 2\r\nConnection: close\r\n\r\nhe"]
    c = connect(port)
    c.send_head("GET", "/dev1/0/1.fid", {})
    assert c.response("GET") == (200, {"content-length": "5"}, b"hello", True)
    c.send_head("GET", "/dev1/0/1.fid", {"Range": "bytes=0-1"})
    status, headers, body, keep = c.response("GET")
    assert (status, body, keep) == (206, b"he", False)
    assert seen[0].startswith(b"GET /dev1/0/1.fid HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Range: bytes=0-1" in seen[1]


def test_chunked_body_with_extensions_and_trailers(node, connect) -> None:
    port, replies, _ = node
    replies.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n")
    c = connect(port)
    c.send_head("GET", "/f", {})
    assert c.response("GET")[2:] == (b"abcdefg", True)


def test_interim_answer_then_the_real_one(node, connect) -> None:
    port, replies, _ = node
    replies.append(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                   b"Content-Length: 0\r\n\r\n")
    c = connect(port)
    c.send_head("PUT", "/f", {"Content-Length": "3"}, b"abc")
    assert c.response("PUT")[0] == 201


def test_body_until_close_and_http_1_0(node, connect) -> None:
    port, replies, _ = node
    replies.append(b"HTTP/1.0 200 OK\r\n\r\nall of it" + CLOSE)
    c = connect(port)
    c.send_head("GET", "/f", {})
    assert c.response("GET")[2:] == (b"all of it", False)


def test_head_reads_no_body(node, connect) -> None:
    port, replies, _ = node
    replies += [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnope"]
    c = connect(port)
    c.send_head("HEAD", "/f", {})
    status, headers, body, keep = c.response("HEAD")
    assert (status, headers["content-length"], body, keep) == (200, "1000", b"", True)
    c.send_head("GET", "/g", {})
    assert c.response("GET")[:3:2] == (404, b"nop")  # the next answer is read in step


def test_too_large_is_413_before_the_body(node, connect) -> None:
    port, replies, _ = node
    replies.append(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    c = connect(port)
    c.send_head("GET", "/f", {})
    with pytest.raises(ServiceError) as e:
        c.response("GET", max_bytes=10, url="http://x/f")
    assert e.value.code == 413


@pytest.mark.parametrize("reply", [b"SPDY/9 200 OK\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_answers_are_http_errors(node, connect, reply: bytes) -> None:
    port, replies, _ = node
    replies.append(reply)
    c = connect(port)
    c.send_head("GET", "/f", {})
    with pytest.raises(HttpError):
        c.response("GET")


def test_a_connection_closed_before_answering_is_stale(node, connect) -> None:
    port, replies, _ = node
    replies.append(CLOSE)
    c = connect(port)
    c.send_head("GET", "/f", {})
    with pytest.raises(StaleConnection):
        c.response("GET")
