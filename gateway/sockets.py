"""Socket I/O that tries the raw non-blocking socket before gevent's wrapper.

Under load a socket is usually ready: a reply fits the send buffer, a request is already
buffered. Calling the underlying socket first skips gevent's wrapper (which costs more than
a small send itself); only when the call would block does gevent wait in its hub. For
sockets without a raw counterpart (TLS) these are plain `recv` / `sendall`.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any


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
        sock._wait(sock._read_event)
        try:
            return raw.recv(size)
        except BlockingIOError:
            pass
    data: bytes = sock.recv(size)
    return data


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
