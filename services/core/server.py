"""The gevent Thrift server every glammp process runs.

One greenlet per connection; the first bytes pick the dialect (`services.core.framing`), so
framed and unframed, binary and compact, and THeader callers share one port and get replies in
their own dialect. Each framed request runs in a worker greenlet of its own (`services.core.
workers`), so a caller that pipelines (the gateway, which shares a few connections among all
its callers) gets every reply as soon as it is ready, matched by seqid, and a slow call never
holds up the ones behind it; replies finished in the same turn of the loop go out in one
write. A caller that waits for each reply sees them in order, as before.

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

import contextlib
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
import gevent.event
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
from services.core.streams import MIN_BYTES as MIN_STREAMED_BYTES
from services.core.streams import StreamedBody
from services.core.workers import Workers

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
# A reply with a streamed body is never joined (a body is not bytes).
assert GATHER_BYTES <= MIN_STREAMED_BYTES
#: A streamed body holds its source (a storage node's connection, one of a bounded few) only
#: while the caller keeps up: a caller that has not taken a chunk within this many seconds
#: gets the rest read whole first, the source freed, and then sent at the caller's pace.
SLOW_CALLER_S = 1.0

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
    """Bookkeeping for one connection: the frames being served (a drain waits for those),
    when bytes last moved (the idle sweeper closes quiet ones), and the replies waiting to
    be written."""

    __slots__ = ("running", "greenlet", "last_active", "binary", "state", "sock", "raw",
                 "outbox", "flush_due", "writer", "failed", "settled", "streams")

    def __init__(self, limits: framing.Limits, sock: socket.socket,
                 state: ConnectionState) -> None:
        self.running = 0
        self.greenlet = gevent.getcurrent()
        self.last_active = time.monotonic()
        # The binary fast path's protocol, reused for every frame of this connection.
        self.binary = framing.protocol_for(framing.BINARY_FIRST, TMemoryBuffer(), limits)
        self.state = state
        self.sock = sock
        self.raw: socket.socket | None = sock._sock  # type: ignore[attr-defined]
        # Replies finished in this turn of the event loop, written together by `_flush`.
        self.outbox: list[bytes] = []
        self.flush_due = False
        # A greenlet finishing a write the socket's buffer could not take at once.
        self.writer: gevent.Greenlet | None = None
        self.failed: Exception | None = None
        # Set when the last running frame or write ends, for a reader waiting to close.
        self.settled: gevent.event.Event | None = None
        # The outbox holds a streamed body (which only a writer greenlet can send).
        self.streams = False

    @property
    def busy(self) -> bool:
        # A reply still being written (a streamed body) keeps the connection busy too: the
        # idle sweeper and a drain leave it alone until it is sent.
        return self.running > 0 or self.writer is not None

    def queue(self, reply: bytes | list[bytes]) -> None:
        """Queues a framed reply; everything queued in one turn of the loop goes out in one
        write, after the frames started in that turn have run as far as they can."""
        if isinstance(reply, bytes):
            self.outbox.append(reply)
        else:
            # Only large replies come in pieces; a streamed body is one of them.
            self.outbox.extend(reply)
            if not self.streams:
                self.streams = any(isinstance(p, StreamedBody) for p in reply)
        if not self.flush_due:
            self.flush_due = True
            gevent.get_hub().loop.run_callback(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        if self.writer is not None or not self.outbox:
            return  # the writer takes what was queued behind it
        pieces, self.outbox = self.outbox, []
        if self.streams:
            # A body is read as it is sent, which may wait: a greenlet writes it all.
            self.streams = False
            self.writer = gevent.spawn(self._write_rest, pieces)
            return
        raw = self.raw
        try:
            if raw is None:
                sent = 0
            elif len(pieces) == 1:
                sent = raw.send(pieces[0])
            else:
                sent = raw.sendmsg(pieces[:64])
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the caller is gone; its connection's reader sees that too
        rest = []
        for piece in pieces:
            if sent >= len(piece):
                sent -= len(piece)
            else:
                rest.append(memoryview(piece)[sent:] if sent else piece)
                sent = 0
        if rest:
            # This runs in the hub, which must not wait: a greenlet writes the rest, and
            # replies queued meanwhile after it.
            self.writer = gevent.spawn(self._write_rest, rest)

    def _write_rest(self, pieces: list) -> None:
        try:
            while pieces:
                # Small pieces go out together with a body's first and last chunks: one
                # write (and one wake-up of the caller) instead of one per piece.
                batch: list = []
                for i, piece in enumerate(pieces):
                    if isinstance(piece, StreamedBody):
                        pieces[i] = b""  # taken: `_send_body` closes it
                        batch = self._send_body(piece, batch)
                    elif piece:
                        batch.append(piece)
                if batch:
                    sockets.send_pieces(self.sock, self.raw, batch)
                pieces, self.outbox, self.streams = self.outbox, [], False
        except OSError:
            pass  # the caller is gone
        except Exception as e:
            # A body that failed midway (no other source could make up its bytes): its frame
            # is torn, so the connection ends; the caller sees a transport error.
            log.warning("streamed reply cut short, closing the connection: %s", e)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        finally:
            for piece in pieces + self.outbox:
                if isinstance(piece, StreamedBody):
                    piece.close()
            self.writer = None
            if self.settled is not None:
                self.settled.set()

    def _send_body(self, body: StreamedBody, batch: list) -> list:
        """Sends `batch` with the body's first chunk, then the chunks as they arrive; returns
        the last chunk unsent, to go out with whatever follows the body. When the caller
        falls behind (`SLOW_CALLER_S`), returns the rest of the body instead, read whole."""
        try:
            left = len(body)
            chunks = iter(body.chunks())
            for chunk in chunks:
                batch.append(chunk)
                left -= len(chunk)
                if left > 0:
                    batch = sockets.send_pieces_within(self.raw, batch, SLOW_CALLER_S)
                    if batch:
                        # Read the rest at the source's pace, so it is freed (`finally`).
                        batch.extend(chunks)
                        return batch
                    self.last_active = time.monotonic()
            return batch
        finally:
            body.close()


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
        self._workers = Workers()

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
        state = ConnectionState(peer=f"{addr[0]}:{addr[1]}")
        conn = _Connection(self.limits, sock, state)
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
        try:
            while not self.draining and conn.failed is None:
                # Every complete frame is handed to a worker greenlet, so a slow call never
                # holds up the ones behind it on this connection (a pipelining caller such
                # as the gateway gets each reply as soon as it is ready, matched by seqid).
                while len(buf) >= 4:
                    size = int.from_bytes(buf[:4], "big", signed=True)
                    if size <= 0 or size > max_frame:
                        self.metrics.incr("frames_refused")
                        raise framing.FramingError(
                            f"frame of {size} bytes refused (limit {max_frame})")
                    if len(buf) < 4 + size:
                        break
                    frame = bytes(buf[4 : 4 + size])
                    del buf[: 4 + size]
                    conn.running += 1
                    self._workers.hand(self._run_frame, conn, frame)
                if conn.running or conn.outbox or not buf:
                    # A reply is on its way, so the next request is not here yet: waiting
                    # first saves a recv that would fail with EAGAIN.
                    sockets.wait_readable(sock)
                if not self._fill(sock, buf, conn):
                    return
        finally:
            # Calls already started still answer (a drain, or a caller that half-closed).
            while conn.running or conn.writer is not None or conn.outbox:
                if conn.running or conn.writer is not None:
                    conn.settled = gevent.event.Event()
                    conn.settled.wait()
                else:
                    gevent.sleep(0)  # the flush is due in this turn of the loop
        if conn.failed is not None:
            raise conn.failed

    def _run_frame(self, conn: _Connection, frame: bytes) -> None:
        try:
            reply = self._serve_frame(frame, conn.state, conn)
        except Exception as e:
            # A malformed THeader frame: the connection is closed (by its reader).
            conn.failed = e
            reply = b""
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RD)
        finally:
            conn.running -= 1
            if not conn.running and conn.settled is not None:
                conn.settled.set()
        if reply:
            conn.queue(reply)
        conn.last_active = time.monotonic()

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
            conn.running = 1
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
            conn.running = 0

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
    @property
    def busy(self) -> bool: ...

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

