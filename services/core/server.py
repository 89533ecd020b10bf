"""The gevent Thrift server every glammp process runs.

One greenlet per connection; the first bytes pick the dialect (`services.core.framing`), so
framed and unframed, binary and compact, and THeader callers share one port and get replies in
their own dialect. Requests on one connection are served in order; pipelined framed requests
are answered in one write.

Limits, each with a named default in `ServerConfig`:

* `max_frame_bytes`: a larger frame closes that connection (counted as `frames_refused`);
  other connections are untouched. Strings and containers inside a message are limited too.
* `idle_timeout_ms`: a connection with no complete request for this long is closed.
* `max_inflight`: requests running at once per process; beyond it calls get a retryable 503
  (`services.core.dispatch`). Connections themselves are not capped here.

A malformed message inside a complete frame is answered with
`TApplicationException(PROTOCOL_ERROR)` and the connection stays usable; a malformed unframed
message closes the connection, since its end cannot be found.

Drain: `drain()` (SIGTERM) sets the status to STOPPING, stops accepting, lets in-flight calls
finish within `drain_grace_ms`, closes idle connections at once and busy ones after their reply.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol

import gevent
from gevent.server import StreamServer
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import (
    CReadableTransport,
    TMemoryBuffer,
    TTransportBase,
    TTransportException,
)

from services.core import framing, sockets
from services.core.context import ConnectionState
from services.core.dispatch import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_MAX_INFLIGHT,
    NOT_FAST,
    Dispatcher,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
DEFAULT_ADMIN_PORT = 9091
#: Largest frame (and unframed message string) accepted, in bytes.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Largest string or binary field accepted inside a message, in bytes.
DEFAULT_MAX_STRING_BYTES = 16 * 1024 * 1024
#: Largest list, set or map accepted inside a message, in elements.
DEFAULT_MAX_CONTAINER_ITEMS = 1_000_000
#: A connection without a complete request for this long is closed, in milliseconds.
DEFAULT_IDLE_TIMEOUT_MS = 300_000
#: How long SIGTERM waits for in-flight calls, in milliseconds.
DEFAULT_DRAIN_GRACE_MS = 10_000
#: The listen backlog.
DEFAULT_BACKLOG = 1024
#: Bytes read from a socket at once.
RECV_BYTES = 64 * 1024
#: Replies larger than this are sent from their pieces (sendmsg) instead of joined first.
GATHER_BYTES = 64 * 1024

_I32 = struct.Struct(">i")

# Errors that mean "this message, not the server, is broken".
_MALFORMED = (
    TProtocolException,
    TTransportException,
    framing.FramingError,
    struct.error,
    ValueError,
    UnicodeDecodeError,
    EOFError,
    OverflowError,
    TypeError,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class ServerConfig:
    """The `[server]` section: where and how the Thrift port is served."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Processes serving the port (SO_REUSEPORT); 1 serves in this process.
    processes: int = 1
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_string_bytes: int = DEFAULT_MAX_STRING_BYTES
    max_container_items: int = DEFAULT_MAX_CONTAINER_ITEMS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS
    default_deadline_ms: int = DEFAULT_DEADLINE_MS
    #: Per-method deadlines, e.g. {"Cache.get" = 200}, in milliseconds.
    deadlines_ms: dict[str, int] = field(default_factory=dict)
    drain_grace_ms: int = DEFAULT_DRAIN_GRACE_MS
    backlog: int = DEFAULT_BACKLOG
    #: The admin HTTP port (metrics, status); 0 picks a free port, -1 turns it off.
    admin_port: int = DEFAULT_ADMIN_PORT
    admin_host: str = DEFAULT_HOST

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")
        if self.processes < 1:
            raise ValueError("processes must be at least 1")
        for name in ("max_frame_bytes", "max_string_bytes", "max_container_items",
                     "max_inflight", "idle_timeout_ms", "default_deadline_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for key, ms in self.deadlines_ms.items():
            if "." not in key or ms <= 0:
                raise ValueError(f"deadlines_ms.{key}: want \"Service.method\" = positive ms")

    @property
    def limits(self) -> framing.Limits:
        return framing.Limits(self.max_frame_bytes, self.max_string_bytes,
                              self.max_container_items)


def listening_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket; with `reuse_port` several processes may share the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class _UnframedReader(TTransportBase, CReadableTransport):
    """A buffered reader over a gevent socket for unframed connections; the C decoder
    (fastbinary) reads straight from its buffer. `pending()` tells whether a request's first
    bytes are already buffered."""

    def __init__(self, sock: socket.socket, conn: _Connection) -> None:
        self.sock = sock
        self.conn = conn
        self._buf = BytesIO(b"")
        self._len = 0

    def pending(self) -> bool:
        return self._buf.tell() < self._len

    def _recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        if not data:
            raise TTransportException(TTransportException.END_OF_FILE, "peer closed")
        self.conn.last_active = time.monotonic()
        return data

    def read(self, sz: int) -> bytes:
        got = self._buf.read(sz)
        if got:
            return got
        data = self._recv(max(sz, RECV_BYTES))
        self._buf, self._len = BytesIO(data), len(data)
        return self._buf.read(sz)

    @property
    def cstringio_buf(self) -> BytesIO:
        return self._buf

    def cstringio_refill(self, partialread: bytes, reqlen: int) -> BytesIO:
        data = bytearray(partialread)
        while len(data) < reqlen:
            data += self._recv(max(reqlen - len(data), RECV_BYTES))
        self._buf, self._len = BytesIO(bytes(data)), len(data)
        return self._buf


class _Connection:
    """Bookkeeping for one connection's greenlet: whether a request is being served (a drain
    waits for those) and when bytes last moved (the idle sweeper closes quiet ones)."""

    __slots__ = ("busy", "greenlet", "last_active", "binary")

    def __init__(self, limits: framing.Limits) -> None:
        self.busy = False
        self.greenlet = gevent.getcurrent()
        self.last_active = time.monotonic()
        # The binary fast path's protocol, reused for every frame of this connection.
        self.binary = framing.protocol_for(framing.BINARY_FIRST, TMemoryBuffer(), limits)


class ThriftServer:
    """Serves a `Dispatcher` on one TCP port; `on_draining()` is called when a drain starts
    (the base service's status turns STOPPING)."""

    def __init__(
        self,
        config: ServerConfig,
        dispatcher: Dispatcher,
        listener: socket.socket | None = None,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.metrics = dispatcher.metrics
        self.limits = config.limits
        self.idle_s = config.idle_timeout_ms / 1000.0
        self.draining = False
        self.on_draining = on_draining
        self.connections: set[_Connection] = set()
        if listener is None:
            listener = listening_socket(config.host, config.port, config.backlog, False)
        self.server = StreamServer(listener, self._handle)
        self._sweeper: gevent.Greenlet | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.address[:2]
        return host, port

    def start(self) -> None:
        self.server.start()
        self._sweeper = gevent.spawn(self._sweep_idle)

    def _sweep_idle(self) -> None:
        # One sweeper instead of a socket timeout on every recv: gevent builds a Timeout
        # object per timed wait, which costs more than the whole dispatch of a small call.
        interval = max(0.05, min(self.idle_s / 4, 5.0))
        while True:
            gevent.sleep(interval)
            cutoff = time.monotonic() - self.idle_s
            for conn in list(self.connections):
                if not conn.busy and conn.last_active < cutoff:
                    self.metrics.incr("connections_idle_closed")
                    conn.greenlet.kill(block=False)

    def serve_forever(self) -> None:
        self.server.serve_forever()

    # -- one connection -------------------------------------------------------------------

    def _handle(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        conn = _Connection(self.limits)
        state = ConnectionState(peer=f"{addr[0]}:{addr[1]}")
        self.connections.add(conn)
        self.metrics.incr("connections")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = sock.recv(1, socket.MSG_PEEK)
            if not first or self.draining:
                return
            if framing.is_unframed(first[0]):
                self._serve_unframed(sock, conn, state, first[0])
            else:
                self._serve_framed(sock, conn, state)
        except framing.FramingError as e:
            self.metrics.incr("connections_refused")
            log.info("closing %s: %s", state.peer, e)
        except (OSError, TTransportException, EOFError) as e:
            if getattr(e, "errno", None) not in (None, errno.ECONNRESET, errno.EPIPE):
                log.info("connection %s ended: %s", state.peer, e)
        finally:
            self.connections.discard(conn)
            for fn in state.closers:
                try:
                    fn()
                except Exception:
                    log.exception("connection close callback failed")
            sock.close()

    def _serve_framed(self, sock: socket.socket, conn: _Connection,
                      state: ConnectionState) -> None:
        buf = bytearray()
        max_frame = self.limits.max_frame_bytes
        while not self.draining:
            while len(buf) < 4:
                if not self._fill(sock, buf, conn):
                    return
            size = int.from_bytes(buf[:4], "big", signed=True)
            if size <= 0 or size > max_frame:
                self.metrics.incr("frames_refused")
                raise framing.FramingError(
                    f"frame of {size} bytes refused (limit {max_frame})"
                )
            while len(buf) < 4 + size:
                if not self._fill(sock, buf, conn):
                    return
            conn.busy = True
            # Every complete frame already received (a pipelining caller such as the gateway
            # sends several at once) is served, concurrently, and answered in one write, in
            # the order received.
            frames = []
            while len(buf) >= 4:
                size = int.from_bytes(buf[:4], "big", signed=True)
                if size <= 0 or size > max_frame or len(buf) < 4 + size:
                    break
                frames.append(bytes(buf[4 : 4 + size]))
                del buf[: 4 + size]
            if len(frames) == 1:
                served = [self._serve_frame(frames[0], state, conn)]
            else:
                served = self._serve_concurrently(frames, state, conn)
            replies = [r for r in served if r]
            if len(replies) == 1 and type(replies[0]) is bytes:
                sockets.send_all(sock, sock._sock, replies[0])  # type: ignore[attr-defined]
            elif replies:
                pieces: list[bytes] = []
                for r in replies:
                    pieces.extend((r,) if isinstance(r, bytes) else r)
                sockets.send_pieces(sock, sock._sock, pieces)  # type: ignore[attr-defined]
            conn.last_active = time.monotonic()
            conn.busy = False
            if replies and not buf:
                # The caller is only now reading its reply, so a recv would almost always
                # fail with EAGAIN (a syscall and an exception): wait for its next request.
                sockets.wait_readable(sock)

    def _serve_concurrently(self, frames: list[bytes], state: ConnectionState,
                            conn: _Connection) -> list[bytes | list[bytes]]:
        """`_serve_frame` for each frame, each in its own greenlet (started in order, so a
        oneway write is buffered before a later read on the connection flushes it); the
        replies in the frames' order. An error in one (a malformed THeader frame) is raised
        once all are done."""

        def serve(frame: bytes) -> tuple[bytes | list[bytes], Exception | None]:
            # Errors are returned, not raised in the greenlet (where gevent would print them).
            try:
                return self._serve_frame(frame, state, conn), None
            except Exception as e:
                return b"", e

        greenlets = [gevent.spawn(serve, frame) for frame in frames]
        try:
            gevent.joinall(greenlets)
        finally:
            gevent.killall([g for g in greenlets if not g.dead])
        served = [g.get() for g in greenlets]
        for _, error in served:
            if error is not None:
                raise error
        return [reply for reply, _ in served]

    @staticmethod
    def _fill(sock: socket.socket, buf: bytearray, conn: _Connection) -> bool:
        data = sock.recv(RECV_BYTES)
        if not data:
            return False
        buf += data
        conn.last_active = time.monotonic()
        return True

    def _serve_frame(self, frame: bytes, state: ConnectionState,
                     conn: _Connection) -> bytes | list[bytes]:
        """The framed reply (b"" for none); large ones stay in pieces, sent without a copy."""
        if frame[0] == framing.BINARY_FIRST:
            try:
                reply = self.dispatcher.dispatch_binary(frame, conn.binary, state)
            except _MALFORMED as e:
                return self._malformed(frame, framing.BINARY_FIRST, e, None)
            if reply is None:
                return b""
            if reply is not NOT_FAST:
                assert isinstance(reply, list)
                size = sum(map(len, reply))
                if size > GATHER_BYTES:
                    return [_I32.pack(size), *reply]
                return b"".join([_I32.pack(size), *reply])
        header = None
        headers = None
        payload = frame
        if frame[:2] == framing.HEADER_MAGIC:
            header = framing.decode_header_frame(frame, self.limits.max_frame_bytes)
            payload = header.payload
            headers = header.headers
            if not payload:
                raise framing.FramingError("empty THeader payload")
        first = payload[0]
        iprot = framing.protocol_for(first, TMemoryBuffer(payload), self.limits)
        otrans = TMemoryBuffer()
        oprot = framing.protocol_for(first, otrans, self.limits)
        try:
            replied = self.dispatcher.dispatch(iprot, oprot, state, headers)
        except _MALFORMED as e:
            return self._malformed(payload, first, e, header)
        if not replied:
            return b""
        return self._frame(otrans.getvalue(), header)

    @staticmethod
    def _frame(out: bytes, header: framing.HeaderFrame | None) -> bytes:
        if header is not None:
            return framing.encode_header_frame(header, out)
        return _I32.pack(len(out)) + out

    def _malformed(self, payload: bytes, first: int, error: Exception,
                   header: framing.HeaderFrame | None) -> bytes:
        """A PROTOCOL_ERROR reply to a message whose frame was whole but whose body was not."""
        self.metrics.incr("malformed_messages")
        otrans = TMemoryBuffer()
        oprot = framing.protocol_for(first, otrans, self.limits)
        name, seqid = _message_id(payload, first)
        exc = TApplicationException(TApplicationException.PROTOCOL_ERROR,
                                    f"malformed message: {error}")
        oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
        exc.write(oprot)
        oprot.writeMessageEnd()
        return self._frame(otrans.getvalue(), header)

    def _serve_unframed(self, sock: socket.socket, conn: _Connection, state: ConnectionState,
                        first: int) -> None:
        reader = _UnframedReader(sock, conn)
        iprot = framing.protocol_for(first, reader, self.limits)
        while not self.draining:
            # Wait for the next request outside the busy window, so a drain can close us.
            if not reader.pending() and not sock.recv(1, socket.MSG_PEEK):
                return
            conn.busy = True
            otrans = TMemoryBuffer()
            oprot = framing.protocol_for(first, otrans, self.limits)
            try:
                replied = self.dispatcher.dispatch(iprot, oprot, state)
            except (TProtocolException, framing.FramingError, struct.error, ValueError,
                    UnicodeDecodeError, OverflowError) as e:
                self.metrics.incr("malformed_messages")
                raise framing.FramingError(f"malformed unframed message: {e}") from None
            if replied:
                sockets.send_all(sock, sock._sock, otrans.getvalue())  # type: ignore[attr-defined]
            conn.last_active = time.monotonic()
            conn.busy = False

    # -- drain ----------------------------------------------------------------------------

    def drain(self, grace_s: float | None = None) -> bool:
        """Stops accepting, waits for in-flight calls (at most `grace_s`), closes the rest.

        Returns True when every in-flight call finished within the grace period.
        """
        if grace_s is None:
            grace_s = self.config.drain_grace_ms / 1000.0
        self.draining = True
        if self.on_draining is not None:
            self.on_draining()
        self.server.close()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        return close_connections(self.connections, grace_s)


class Closable(Protocol):
    busy: bool
    greenlet: gevent.Greenlet


def close_connections(connections: Collection[Closable], grace_s: float) -> bool:
    """The drain of a set of connections whose greenlets remove themselves when they end:
    idle ones are closed at once, busy ones after the request they are serving (their loops
    stop once the server is draining), and any still busy after `grace_s` seconds are cut.
    Returns True when none had to be cut."""
    deadline = time.monotonic() + grace_s
    while True:
        for conn in list(connections):
            if not conn.busy:
                conn.greenlet.kill(block=False)
        if not connections:
            return True
        if time.monotonic() >= deadline:
            log.warning("drain grace over; closing %d busy connections", len(connections))
            for conn in list(connections):
                conn.greenlet.kill(block=False)
            return False
        gevent.sleep(0.01)


def _message_id(payload: bytes, first: int) -> tuple[str, int]:
    """The name and seqid of a message whose body failed to decode (best effort)."""
    try:
        iprot = framing.protocol_for(first, TMemoryBuffer(payload),
                                     framing.Limits(len(payload), len(payload), 0))
        name, _, seqid = iprot.readMessageBegin()
        return name, seqid
    except Exception:
        return "", 0

