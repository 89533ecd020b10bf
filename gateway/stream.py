"""Buffered reads from a caller's socket, for the gateway's greenlet-served paths.

Kept out of the modules mypyc compiles (scripts/compile_gateway.py): compiled, this
subclass of Thrift's Python transport broke its unframed decoding ("SystemError: bad
argument to internal function"), and the fastest path (framed binary callers on plain TCP,
served from event-loop callbacks in `proxy.Gateway._relay`) does not read through it.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from thrift.transport.TTransport import TTransportBase

from services.core import framing

#: Bytes read from a caller socket at once.
RECV_BYTES = 64 * 1024


class Closed(Exception):
    """The caller closed its connection."""


class Stream(TTransportBase):
    """Buffered reads from a caller socket (plain or TLS); also a Thrift transport for
    decoding unframed messages, counting bytes so one message cannot exceed `limit`."""

    def __init__(self, sock: Any, raw: socket.socket | None, conn: Any, limit: int) -> None:
        self.sock = sock
        # The OS socket for the fast path; None for TLS, whose bytes must go through it.
        self.raw = raw
        self.conn = conn  # the caller's connection (`proxy._Conn`), kept active by reads
        self.buf = bytearray()
        self.limit = limit
        self.counted = 0

    def fill(self) -> None:
        raw = self.raw
        if raw is not None:
            # `sockets.recv`, inlined: it runs once per call of a greenlet-served caller.
            self.sock._wait(self.sock._read_event)
            try:
                data = raw.recv(RECV_BYTES)
            except BlockingIOError:
                data = self.sock.recv(RECV_BYTES)
        else:
            data = self.sock.recv(RECV_BYTES)
        if not data:
            raise Closed()
        self.buf += data
        self.conn.last_active = time.monotonic()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def discard(self, n: int) -> None:
        while n > 0:
            if not self.buf:
                self.fill()
            k = min(n, len(self.buf))
            del self.buf[:k]
            n -= k

    # TTransportBase, for the unframed decoder
    def read(self, sz: int) -> bytes:
        if not self.buf:
            self.fill()
        out = bytes(self.buf[:sz])
        del self.buf[:sz]
        self.counted += len(out)
        if self.counted > self.limit:
            raise framing.FramingError(f"unframed message over {self.limit} bytes")
        return out
