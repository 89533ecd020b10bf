"""Socket I/O that tries the raw non-blocking socket before gevent's wrapper.

Under load a socket is usually ready: a reply fits the send buffer, a request is already
buffered. Calling the underlying socket first skips gevent's wrapper (which costs more than
a small send itself); only when the call would block does gevent wait in its hub. For
sockets without a raw counterpart (TLS) these are plain `recv` / `sendall`.
"""

from __future__ import annotations

import _socket
import socket
import time
from typing import Any

import gevent.socket


def raw_of(sock: Any) -> socket.socket | None:
    """The non-blocking OS socket under a gevent socket, or None (e.g. for TLS)."""
    raw = getattr(sock, "_sock", None)
    # `_socket.socket`: with gevent's patching, `socket.socket` is gevent's own class.
    if isinstance(raw, _socket.socket) and not hasattr(sock, "getpeercert"):
        return raw  # type: ignore[return-value]
    return None


def recv(sock: Any, raw: socket.socket | None, size: int) -> bytes:
    """Up to `size` bytes; b"" when the peer closed. Waits (cooperatively) for data.

    With a raw socket this waits for readability first and then reads once: in the
    request-reply rhythm of Thrift the next bytes are rarely there yet, and reading first
    (as gevent's `recv` does) costs a failed system call every time.
    """
    if raw is not None:
        wait_readable(sock)
        try:
            return raw.recv(size)
        except BlockingIOError:
            pass
    data: bytes = sock.recv(size)
    return data


def wait_readable(sock: Any) -> None:
    """Waits (cooperatively, within the socket's timeout) until `sock` has bytes to read or
    is closed. After a request is written the reply is rarely there yet: waiting first saves
    the failed recv (a system call and an exception) that reading first would cost."""
    sock._wait(sock._read_event)


def send_all(sock: Any, raw: socket.socket | None, data: bytes) -> None:
    """Sends all of `data`, waiting (cooperatively) when the send buffer is full."""
    sent = 0
    if raw is not None:
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
    sock.sendall(memoryview(data)[sent:])


def send_pieces(sock: Any, raw: socket.socket | None, pieces: list[bytes]) -> None:
    """Sends the pieces in order without joining them first (a large reply is not copied):
    one gathering sendmsg on the raw socket, then gevent's sendall for what did not fit."""
    if raw is None or len(pieces) > 64:  # far below IOV_MAX; many pipelined replies
        send_all(sock, raw, b"".join(pieces))
        return
    try:
        sent = raw.sendmsg(pieces)
    except BlockingIOError:
        sent = 0
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
            continue
        sock.sendall(memoryview(piece)[sent:])
        sent = 0


def send_pieces_within(raw: socket.socket | None, pieces: list, timeout_s: float) -> list:
    """Sends the pieces in order, as `send_pieces` does, but waits for room at most until
    `timeout_s` after the start; returns what the peer had not taken by then (nothing when
    all went)."""
    assert raw is not None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sent = raw.sendmsg(pieces[:64])
        except BlockingIOError:
            sent = 0
        while pieces and sent >= len(pieces[0]):
            sent -= len(pieces.pop(0))
        if not pieces:
            return pieces
        if sent:
            pieces[0] = memoryview(pieces[0])[sent:]
        wait = deadline - time.monotonic()
        if wait <= 0:
            return pieces
        try:
            gevent.socket.wait_write(raw.fileno(), timeout=wait)
        except TimeoutError:
            return pieces
