"""The gateway: one port for callers in every Thrift dialect, routed to upstream instances.

A request's path:

1. The connection's first bytes pick the dialect (`services.core.framing`): framed or
   unframed, binary or compact, or THeader. With `[gateway.tls]` the connection is TLS
   first, and the caller's certificate names it.
2. The message header gives the route: "Cache:get" goes to the Cache upstreams; a name
   without a service goes to `default_service`; "Base" is answered by the gateway itself.
3. Checks, in order, each answered as `ServiceError` (origin "gateway") in field 1 of the
   method's result struct, so any generated client raises it natively:
   access rules (403), the caller's rate limit for the service (429 with retry_after_ms),
   the gateway's in-flight limit (503, retryable). A frame over `max_frame_bytes` is read
   and discarded and answered 413. An unknown service answers
   `TApplicationException(UNKNOWN_METHOD)`.
4. Forwarding. Binary callers' bodies are passed through untouched (only the name and
   seqid are rewritten); compact, unframed and THeader-compact callers are translated to
   binary and back, generically. The call waits at most its deadline
   (`deadlines_ms["Service.method"]`, then `["Service"]`, then `default_deadline_ms`, or
   the THeader caller's `Deadline-Budget`):
   * no healthy instance, or every attempt not sent: 503, retryable;
   * the connection died after the request was sent: 503, retried (and retryable) only
     for idempotent methods, since the instance may have run it;
   * the deadline passed: 504, retryable only for idempotent methods.
   Retries go to another instance, within the deadline, `max_attempts` and the retry
   budget. Oneway calls are written upstream and not waited for.

What happens to the caller's connection: nothing, for every case above; it is closed only
for a malformed frame header, an unframed message that cannot be decoded (its end cannot
be found), a failed TLS handshake, idling beyond `idle_timeout_ms`, or a drain.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from collections import deque
from typing import Any

import gevent
from gevent.hub import Waiter, get_hub
from gevent.server import StreamServer
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer, TTransportException

import glammp.base.Base
from gateway import upstream, wire
from gateway.access import AccessPolicy, Caller
from gateway.backends import BackendWatch
from gateway.config import MAX_DEADLINE_MS, GatewayConfig, matches
from gateway.limits import RateLimiter, RetryBudget
from gateway.stream import RECV_BYTES, Closed, Stream
from glammp.base.ttypes import Status
from glammp.common.ttypes import ServiceError
from services.core import errors, framing, sockets
from services.core.base import BaseHandler, StatusBoard
from services.core.context import ConnectionState
from services.core.dispatch import BASE_SERVICE, DEADLINE_HEADER, NOT_FAST, Dispatcher, Mount
from services.core.metrics import Metrics, fb303_counters
from services.core.server import close_connections, listening_socket

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

ORIGIN = "gateway"
CALL = TMessageType.CALL
#: Bytes of an oversized frame kept to read its message header for the 413.
OVERSIZED_HEAD_BYTES = 4096
#: How often calls are checked for a passed deadline, in seconds (a 504 is at most this late).
EXPIRY_TICK_S = 0.005
#: Message names whose route is memoized, at most (callers choose names; the rest are
#: looked up every time).
MAX_ROUTES = 10_000
#: `_route` returns this when the reply will be written by whoever ends the call.
_ASYNC = b"async"
#: Containers in a translated message may hold at most this many elements.
MAX_CONTAINER_ITEMS = 1_000_000

# What a malformed message raises while being decoded or translated.
_MALFORMED = (wire.WireError, TProtocolException, TTransportException, framing.FramingError,
              struct.error, ValueError, UnicodeDecodeError, EOFError, OverflowError,
              TypeError, KeyError, IndexError, RecursionError)


#: The start of a result struct whose field 1 is a struct (ServiceError) whose field 1 is an
#: i32 (its code).
_ERROR_FIELD = b"\x0c\x00\x01\x08\x00\x01"


class _Conn:
    """One caller connection: who it is, and its call in flight."""

    __slots__ = ("caller", "busy", "greenlet", "last_active", "state", "sock", "raw",
                 "waiter", "writer", "pump", "buf", "paused", "pins")

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        # A call is in flight, or its reply is still being written.
        self.busy = False
        self.greenlet = gevent.getcurrent()
        self.last_active = time.monotonic()
        self.state = ConnectionState(peer=caller.ip)
        self.sock: Any = None
        self.raw: socket.socket | None = None
        # The connection's greenlet, waiting for the call in flight to end (`_settle`).
        self.waiter: Waiter | None = None
        # A greenlet writing the rest of a reply the socket buffer could not take at once.
        self.writer: gevent.Greenlet | None = None
        # While the event loop serves the connection (`Gateway._relay`): what serves the
        # requests buffered in `buf`, and whether reading stopped until they are.
        self.pump: Any = None
        self.buf: bytearray | None = None
        self.paused = False
        # Service -> the instance this connection's sticky calls go to (`_sticky_pick`).
        self.pins: dict[str, upstream.Instance] | None = None

    def settled(self) -> None:
        """The call in flight is answered: the connection may read its next request."""
        self.busy = False
        self.last_active = time.monotonic()
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            get_hub().loop.run_callback(waiter.switch, None)
        elif self.pump is not None and (self.buf or self.paused):
            # A pipelining caller's next request (never run from here: this may be a call
            # of the pump itself).
            get_hub().loop.run_callback(self.pump)

    def deliver(self, framed: bytes) -> None:
        """Writes a reply from wherever the call ended (an upstream connection's reader, a
        deadline): what the socket takes at once, and the rest from a greenlet."""
        sent = 0
        raw = self.raw
        if raw is not None:
            try:
                sent = raw.send(framed)
            except BlockingIOError:
                pass
            except OSError:
                self.settled()  # the caller is gone; its greenlet sees that too
                return
            if sent == len(framed):
                self.settled()
                return
        self.writer = gevent.spawn(self._write_rest, memoryview(framed)[sent:])

    def _write_rest(self, rest: memoryview) -> None:
        try:
            self.sock.sendall(rest)
        except OSError:
            pass
        finally:
            self.writer = None
            self.settled()


class _Route:
    """What the config says of calls with one message name (memoized per name until the next
    reload), and the message-header bytes the gateway writes for them."""

    __slots__ = ("service", "method", "labels", "cluster", "oneway", "idempotent", "sticky",
                 "budget_s", "limited", "allowed", "plain", "upstream_name", "call_prefix",
                 "reply_prefixes")

    def __init__(self, service: str, method: str, cluster: upstream.Cluster | None,
                 oneway: bool, idempotent: bool, sticky: bool, budget_s: float,
                 limited: bool, allowed: bool | None) -> None:
        self.service = service
        self.method = method
        self.labels = (service, method)
        self.cluster = cluster  # None: the gateway's own Base service, or unknown
        self.oneway = oneway  # declared oneway in the config
        self.idempotent = idempotent
        self.sticky = sticky  # goes to the instance the caller's connection sticks to
        self.budget_s = budget_s
        self.limited = limited  # the service has rate limits
        self.allowed = allowed  # the access rules' answer for every caller (None: it depends)
        # Calls go upstream unless the gateway is full: no rule, limit or oneway to apply.
        self.plain = cluster is not None and allowed is True and not limited and not oneway
        self.upstream_name = f"{service}:{method}"
        # A CALL's binary message header up to its seqid, as sent upstream, and the reply
        # headers (REPLY, EXCEPTION) up to the seqid as the caller gets them: the bare
        # method name, as Apache's multiplexed processor answers.
        self.call_prefix = _message_prefix(TMessageType.CALL, self.upstream_name)
        self.reply_prefixes = {t: _message_prefix(t, method)
                               for t in (TMessageType.REPLY, TMessageType.EXCEPTION)}


def _message_prefix(mtype: int, name: str) -> bytes:
    raw = name.encode()
    return bytes((0x80, 0x01, 0x00, mtype)) + len(raw).to_bytes(4, "big") + raw


class _Call:
    """A call on its way through the gateway: what to send, where it was tried, and where
    its reply goes (`sink`, given the binary reply message, or None for a oneway call)."""

    # Set when they change; the class holds what a new call starts with.
    link: upstream.Link | None = None
    link_seqid = 0
    instance: upstream.Instance | None = None
    tried: list[upstream.Instance] | None = None
    err: ServiceError | None = None
    done = False
    sink: Any = None
    result: bytes | None = None
    waiter: Waiter | None = None

    def __init__(self, gateway: Gateway, conn: _Conn, route: _Route, mtype: int, seqid: int,
                 body: memoryview, oneway: bool, budget_s: float) -> None:
        self.route = route
        self.gateway = gateway
        self.conn = conn
        self.seqid = seqid  # the caller's
        self.mtype = mtype
        self.name = route.upstream_name
        self.prefix = route.call_prefix if mtype == TMessageType.CALL else b""
        self.body = body
        self.oneway = oneway
        self.budget_s = budget_s
        # One clock for both: perf_counter is monotonic too.
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s

    # -- what the upstream connection tells (upstream.Call) -------------------------------

    def replied(self, payload: bytes, body_at: int) -> None:
        inst = self.instance
        if inst is not None:
            inst.done(self)
            inst.failures = 0  # `succeeded()`
        self.gateway._finish(self, payload, None, body_at)

    def lost(self, reason: str) -> None:
        self.gateway._failed(self, upstream.LostAfterSend(reason))

    def not_sent(self, reason: str) -> None:
        self.gateway._failed(self, upstream.NotSent(reason))


class Gateway:
    """The gateway's Thrift port: accepting, routing, limits and forwarding.

    `reload(config)` applies a new config to established connections (upstreams, limits,
    rules, deadlines); the listening address and TLS files are kept from the start.
    """

    def __init__(self, config: GatewayConfig, listener: socket.socket | None = None) -> None:
        self.metrics = Metrics()
        self.board = StatusBoard()
        self.board.watch("upstreams", self)
        self.clusters: dict[str, upstream.Cluster] = {}
        self.connections: set[_Conn] = set()
        self.per_caller: dict[str, int] = {}
        self.inflight = 0
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = f"gw{os.getpid():x}-{os.urandom(2).hex()}"
        base = BaseHandler(self.board, lambda: fb303_counters(self.metrics.snapshot()),
                           "glammp-gateway")
        self.base = Dispatcher([Mount(BASE_SERVICE, glammp.base.Base, base, ORIGIN)],
                               self.metrics)
        self._base_binary = framing.protocol_for(
            framing.BINARY_FIRST, TMemoryBuffer(), self._limits(config))
        self.config = config
        self._sweeper: gevent.Greenlet | None = None
        # Calls in flight by deadline budget (`_track`), and the parked expiry sweeper.
        self._expiring: dict[float, deque[_Call]] = {}
        self._expiry_wait: Waiter | None = None
        self._expirer: gevent.Greenlet | None = None
        self.rate = RateLimiter(config)
        self.reload(config)
        self.tls = _tls_context(config) if config.tls.enabled else None
        if listener is None:
            listener = listening_socket(config.host, config.port, 1024, False)
        self.server = StreamServer(listener, self._handle)
        self.backends = BackendWatch(lambda: self.clusters)

    @staticmethod
    def _limits(config: GatewayConfig) -> framing.Limits:
        return framing.Limits(config.max_frame_bytes, config.max_frame_bytes,
                              MAX_CONTAINER_ITEMS)

    def reload(self, config: GatewayConfig) -> None:
        """Applies `config` (SIGHUP): existing connections keep going under the new rules."""
        self.config = config
        self.limits = self._limits(config)
        self.max_inflight = config.max_inflight
        self.clusters = upstream.clusters(
            config, self.metrics, self.clusters,
            on_new=lambda c: c.start() if self._sweeper is not None else None)
        self.rate.configure(config)
        self.access = AccessPolicy(config)
        self.retry_budget = RetryBudget(config.retry_budget_ratio, config.retry_min_per_s)
        self.idempotent = frozenset(config.idempotent)
        self.sticky = frozenset(config.sticky)
        self.oneway = frozenset(config.oneway)
        self._deadlines: dict[tuple[str, str], float] = {}
        self._policy: dict[tuple[str, str], bool] = {}
        self._routes: dict[str, _Route] = {}
        # The plain ones (`_Route.plain`) by the name's bytes, for `_relay`.
        self._plain: dict[bytes, _Route] = {}
        self._access_log = config.access_log

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.address[:2]
        return host, port

    def start(self) -> None:
        self.server.start()
        for cluster in self.clusters.values():
            cluster.start()
        self._sweeper = gevent.spawn(self._sweep_idle)
        self._expirer = gevent.spawn(self._expire_calls)
        self.backends.start()
        self.board.state = Status.ALIVE

    def health(self) -> tuple[int, str]:
        """WARNING while a service has no healthy instance (base getStatus, /healthz)."""
        down = [s for s, c in self.clusters.items() if not c.healthy()]
        if down:
            return Status.WARNING, "no healthy instance of " + ", ".join(sorted(down))
        return Status.ALIVE, ""

    def _sweep_idle(self) -> None:
        while True:
            idle_s = self.config.idle_timeout_ms / 1000.0
            gevent.sleep(max(0.05, min(idle_s / 4, 5.0)))
            cutoff = time.monotonic() - idle_s
            for conn in list(self.connections):
                if not conn.busy and conn.last_active < cutoff:
                    self.metrics.incr("gateway_idle_closed")
                    conn.greenlet.kill(block=False)

    # -- connections ----------------------------------------------------------------------

    def _handle(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        conn = _Conn(Caller(addr[0]))
        if (len(self.connections) >= self.config.max_connections
                or self.per_caller.get(addr[0], 0) >= self.config.max_connections_per_caller
                or self.draining):
            self.metrics.incr("gateway_connections_refused")
            sock.close()
            return
        self.connections.add(conn)
        self.per_caller[addr[0]] = self.per_caller.get(addr[0], 0) + 1
        self.metrics.incr("connections")
        stream_sock: Any = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = sockets.raw_of(sock)
            if self.tls is not None:
                stream_sock = self._handshake(sock, conn)
                raw = None
            conn.sock, conn.raw = stream_sock, raw
            stream = Stream(stream_sock, raw, conn, self.config.max_frame_bytes)
            stream.fill()
            if framing.is_unframed(stream.buf[0]):
                self._serve_unframed(stream, conn, stream.buf[0])
            else:
                self._serve_framed(stream, conn)
        except Closed:
            pass
        except (framing.FramingError, wire.WireError, ssl.SSLError) as bad:
            self.metrics.incr("connections_refused")
            log.info("closing %s: %s", addr[0], bad)
        except (OSError, TTransportException, EOFError) as e:
            if getattr(e, "errno", None) not in (None, errno.ECONNRESET, errno.EPIPE):
                log.info("connection %s ended: %s", addr[0], e)
        except Exception:
            # A bug, not the caller's fault: counted and logged, and only this connection ends.
            self.metrics.incr("gateway_internal_errors")
            log.exception("unexpected error serving %s", addr[0])
        finally:
            self.connections.discard(conn)
            left = self.per_caller.get(addr[0], 1) - 1
            if left:
                self.per_caller[addr[0]] = left
            else:
                self.per_caller.pop(addr[0], None)
            if stream_sock is not sock:
                stream_sock.close()
            sock.close()

    def _handshake(self, sock: socket.socket, conn: _Conn) -> Any:
        assert self.tls is not None
        tls_sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            with gevent.Timeout(self.config.tls.handshake_timeout_ms / 1000.0,
                                ssl.SSLError("TLS handshake timed out")):
                tls_sock.do_handshake()
        except BaseException:
            tls_sock.close()
            raise
        cert: Any = tls_sock.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    conn.caller = Caller(conn.caller.ip, str(value))
        return tls_sock

    def _serve_framed(self, stream: Stream, conn: _Conn) -> None:
        max_frame = self.config.max_frame_bytes
        sock = stream.sock
        buf = stream.buf
        fast = stream.raw is not None
        while not self.draining:
            if fast:
                if conn.busy:
                    self._settle(conn)
                self._relay(stream, conn)
                if self.draining:
                    break
            while len(buf) < 4:
                stream.fill()
            size = int.from_bytes(buf[:4], "big", signed=True)
            if conn.busy:
                # A caller that pipelines: its calls are served one at a time, in order.
                self._settle(conn)
            conn.busy = True
            if size <= 0:
                raise framing.FramingError(f"frame of {size} bytes")
            if size > max_frame:
                del buf[:4]
                reply = self._oversized(stream, size)
            else:
                while len(buf) < 4 + size:
                    stream.fill()
                payload = bytes(buf[4 : 4 + size])
                del buf[: 4 + size]
                if fast and payload[0] == wire.BINARY_FIRST:
                    try:
                        message = self._route(wire.parse_binary(payload), payload, conn, None,
                                              True)
                    except wire.WireError as e:
                        message = self._malformed(wire.BINARY_FIRST, payload, e)
                    if message is _ASYNC:
                        continue  # the reply is written by whoever ends the call
                    reply = wire.frame(message) if message else b""
                else:
                    reply = self._serve_frame(payload, conn)
            if reply:
                sockets.send_all(sock, stream.raw, reply)
            conn.last_active = time.monotonic()
            conn.busy = False
        # Draining: a call sent before the drain began is answered before the connection
        # closes (it may have been waiting for an upstream connection when the drain began).
        self._settle(conn)

    def _relay(self, stream: Stream, conn: _Conn) -> None:
        """Serves a plain-socket framed binary caller from callbacks of the event loop, while
        the connection's greenlet waits: its requests are read, routed and sent upstream as
        they arrive, without waking the greenlet (a greenlet switch per call costs more than
        the rest of a small call's relay). Requests are still served one at a time, in order.

        Returns when the frame at the head of the buffer needs the greenlet (not binary,
        over the size limit, or a bad frame header) or the gateway drains; raises Closed
        when the caller closes, or the socket's error."""
        loop = get_hub().loop
        raw = stream.raw
        assert raw is not None
        buf = stream.buf
        max_frame = self.config.max_frame_bytes
        route, send = self._route, self._send
        monotonic = time.monotonic
        watcher = loop.io(raw.fileno(), 1)
        park = Waiter()

        def hand_back(error: BaseException | None = None) -> None:
            conn.pump = None
            watcher.stop()
            if error is None:
                park.switch(None)
            else:
                park.throw(error)

        def pump() -> None:
            if conn.pump is not pump:
                return  # the greenlet has the connection back (or it is gone)
            try:
                while not conn.busy:
                    n = len(buf)
                    if n < 4:
                        break
                    size = int.from_bytes(buf[:4], "big", signed=True)
                    if size <= 0 or size > max_frame or self.draining:
                        hand_back()
                        return
                    if n < 4 + size:
                        break
                    if buf[4] != wire.BINARY_FIRST:
                        hand_back()
                        return
                    payload = bytes(buf[4 : 4 + size])
                    del buf[: 4 + size]
                    conn.busy = True
                    # A plain route's call (the usual one) goes straight out; the header is
                    # checked as `wire.parse_binary` would.
                    end = 8 + int.from_bytes(payload[4:8], "big", signed=True)
                    plain = self._plain.get(payload[8:end]) if 8 <= end <= size - 4 else None
                    if (plain is not None and payload[1] == 0x01 and payload[3] & 0x07 == CALL
                            and self.inflight < self.max_inflight):
                        message = send(_Call(
                            self, conn, plain, CALL,
                            int.from_bytes(payload[end : end + 4], "big", signed=True),
                            memoryview(payload)[end + 4 :], False, plain.budget_s), True)
                    else:
                        try:
                            message = route(wire.parse_binary(payload), payload, conn, None,
                                            True)
                        except wire.WireError as bad:
                            message = self._malformed(wire.BINARY_FIRST, payload, bad)
                    if message is _ASYNC:
                        continue  # answered by whoever ends the call (`_Conn.deliver`)
                    if message:
                        conn.deliver(wire.frame(message))
                    else:
                        conn.settled()
                if conn.paused and (not conn.busy or len(buf) < RECV_BYTES):
                    # Caught up, or the next request is not whole yet: read again.
                    conn.paused = False
                    watcher.start(readable)
            except Exception as e:
                # A bug: the greenlet raises it, which ends only this connection.
                hand_back(e)

        def readable() -> None:
            try:
                data = raw.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as e:
                hand_back(e)
                return
            if not data:
                hand_back(Closed())
                return
            buf.extend(data)
            conn.last_active = monotonic()
            if not conn.busy:
                pump()
            elif len(buf) >= RECV_BYTES:
                # A caller pipelining ahead of its answers: read no more until they catch up.
                watcher.stop()
                conn.paused = True

        conn.pump, conn.buf = pump, buf
        watcher.start(readable)
        if buf:
            loop.run_callback(pump)
        try:
            park.get()
        finally:
            conn.pump, conn.buf, conn.paused = None, None, False
            # Stopped, not closed: this may run inside the watcher's own callback (which
            # handed the connection back), and the watcher goes with its closures.
            watcher.stop()

    @staticmethod
    def _settle(conn: _Conn) -> None:
        while conn.busy:
            conn.waiter = Waiter()
            try:
                conn.waiter.get()
            finally:
                conn.waiter = None

    def _oversized(self, stream: Stream, size: int) -> bytes:
        """413 for a frame over the limit: its head is kept for the message header, the
        rest is read and dropped, so the connection stays usable."""
        self.metrics.incr("frames_refused")
        head = stream.read_exact(min(size, OVERSIZED_HEAD_BYTES))
        stream.discard(size - len(head))
        first = head[0]
        if first not in (wire.BINARY_FIRST, wire.COMPACT_FIRST):
            raise framing.FramingError(f"frame of {size} bytes refused")
        try:
            h = wire.read_header(first, head, self.limits)
        except _MALFORMED:
            raise framing.FramingError(f"frame of {size} bytes refused") from None
        service, method = self._route_name(h.name)
        err = errors.too_large(
            f"request of {size} bytes is over the gateway's limit of "
            f"{self.config.max_frame_bytes} bytes", limit=self.config.max_frame_bytes)
        self.metrics.observe((service, method), err.code, 0.0)
        if h.mtype == TMessageType.ONEWAY:
            return b""
        err = errors.with_context(err, ORIGIN, self.new_request_id())
        return wire.frame(wire.error_reply(first, method, h.seqid, err))

    def _serve_frame(self, payload: bytes, conn: _Conn) -> bytes:
        if payload[:2] == framing.HEADER_MAGIC:
            hf = framing.decode_header_frame(payload, self.config.max_frame_bytes)
            if not hf.payload:
                raise framing.FramingError("empty THeader payload")
            reply = self._serve_payload(hf.payload, conn, hf.headers)
            return framing.encode_header_frame(hf, reply) if reply else b""
        reply = self._serve_payload(payload, conn, None)
        return wire.frame(reply) if reply else b""

    def _serve_payload(self, payload: bytes, conn: _Conn,
                       headers: dict[str, str] | None) -> bytes | None:
        """One message in the caller's protocol -> the reply in it (None: no reply)."""
        first = payload[0]
        if first == wire.BINARY_FIRST:
            try:
                h = wire.parse_binary(payload)
            except wire.WireError as bad:
                return self._malformed(first, payload, bad)
            return self._route(h, payload, conn, headers)
        if first != wire.COMPACT_FIRST:
            raise framing.FramingError(f"not a Thrift message (first byte 0x{first:02x})")
        try:
            _, binary = wire.translate(payload, first, wire.BINARY_FIRST, self.limits)
            h = wire.parse_binary(binary)
        except _MALFORMED as e:
            return self._malformed(first, payload, e)
        reply = self._route(h, binary, conn, headers)
        if reply is None:
            return None
        return wire.translate(reply, wire.BINARY_FIRST, first, self.limits)[1]

    def _malformed(self, first: int, payload: bytes, error: Exception) -> bytes:
        self.metrics.incr("malformed_messages")
        try:
            h = wire.read_header(first, payload, self.limits)
            name, seqid = h.name.rpartition(":")[2], h.seqid
        except _MALFORMED:
            name, seqid = "", 0
        return wire.application_error(first, name, seqid, TApplicationException.PROTOCOL_ERROR,
                                      f"malformed message: {error}")

    def _serve_unframed(self, stream: Stream, conn: _Conn, first: int) -> None:
        iprot = wire.protocol(first, stream, self.limits)
        sock = stream.sock
        while not self.draining:
            if not stream.buf:
                stream.fill()
            conn.busy = True
            stream.counted = 0
            otrans = TMemoryBuffer()
            try:
                wire.copy_message(iprot, TBinaryProtocol(otrans))
                binary = otrans.getvalue()
                h = wire.parse_binary(binary)
            except Closed:
                raise
            except _MALFORMED as e:
                self.metrics.incr("malformed_messages")
                raise framing.FramingError(f"malformed unframed message: {e}") from None
            reply = self._route(h, binary, conn, None)
            if reply is not None:
                if first != wire.BINARY_FIRST:
                    reply = wire.translate(reply, wire.BINARY_FIRST, first, self.limits)[1]
                sockets.send_all(sock, stream.raw, reply)
            conn.last_active = time.monotonic()
            conn.busy = False

    # -- one call -------------------------------------------------------------------------

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def _route_for(self, name: str) -> _Route:
        """The route of calls named `name`, memoized until the next reload."""
        service, method = self._route_name(name)
        route = _Route(service, method, self.clusters.get(service),
                       bool(self.oneway) and f"{service}.{method}" in self.oneway,
                       self._is_idempotent(service, method),
                       matches(self.sticky, service, method),
                       self._deadline_s(service, method, None),
                       service in self.config.rate_limits,
                       self.access.for_everyone(service, method))
        if len(self._routes) < MAX_ROUTES:
            self._routes[name] = route
            if route.plain:
                self._plain[name.encode()] = route
        return route

    def _route_name(self, name: str) -> tuple[str, str]:
        service, sep, method = name.partition(":")
        if not sep:
            return self.config.default_service, name
        return service, method

    def _route(self, h: wire.Header, binary: bytes, conn: _Conn,
               headers: dict[str, str] | None, fast: bool = False) -> bytes | None:
        """Serves one binary message; returns the binary reply with the caller's seqid and
        the bare method name (as Apache's multiplexed processor answers, and as Go's and
        Node's clients check), or None when there is none (oneway).

        With `fast` (a framed binary caller on a plain socket) a call sent upstream returns
        `_ASYNC` at once: its framed reply is written to the caller from wherever the call
        ends (`_Conn.deliver`, which also settles a oneway call once written), so nothing
        waits here, and this may run in the event loop itself (`_relay`)."""
        route = self._routes.get(h.name)
        if route is None:
            route = self._route_for(h.name)
        cluster = route.cluster
        if cluster is None and route.service == BASE_SERVICE:
            try:
                return self._local(binary, conn)
            except _MALFORMED as e:
                return self._malformed(wire.BINARY_FIRST, binary, e)
        mtype = h.mtype
        if cluster is None or mtype not in (TMessageType.CALL, TMessageType.ONEWAY):
            self.metrics.count_unknown()
            kind = (TApplicationException.UNKNOWN_METHOD if cluster is None
                    else TApplicationException.INVALID_MESSAGE_TYPE)
            return wire.application_error(wire.BINARY_FIRST, route.method, h.seqid, kind,
                                          f"unknown service or method: {h.name!r}")
        service = route.service
        oneway = route.oneway or mtype == TMessageType.ONEWAY
        budget_s = route.budget_s
        if headers:
            budget_s = self._deadline_s(service, route.method, headers)
        caller = conn.caller
        err: ServiceError | None = None
        if not (route.allowed if route.allowed is not None
                else self.access.allowed(caller, service, route.method)):
            err = errors.forbidden(f"{service}.{route.method} is not allowed for "
                                   f"{caller.key}", caller=caller.key)
        elif route.limited and (wait_ms := self.rate.take(caller.key, service)) > 0:
            err = errors.too_many_requests(
                f"{caller.key} is over its rate limit for {service}", wait_ms)
        elif self.inflight >= self.max_inflight:
            err = errors.unavailable(
                f"gateway busy: {self.config.max_inflight} requests in flight",
                retry_after_ms=50)
        call = _Call(self, conn, route, mtype, h.seqid, memoryview(binary)[h.body_at:], oneway,
                     budget_s)
        if err is not None:
            self.inflight += 1
            self.metrics.active += 1
            call.sink = _keep
            self._finish(call, None, err)
            return call.result
        return self._send(call, fast)

    def _send(self, call: _Call, fast: bool) -> bytes | None:
        """Sends a call that passed the checks; returns its reply as `_route` does."""
        self.inflight += 1
        self.metrics.active += 1
        self.retry_budget.calls += 1
        if not call.oneway:
            budget_s = call.budget_s
            # Watch the deadline. Calls with the same budget reach their deadlines in the
            # order they started, so one queue per budget is in deadline order.
            queue = self._expiring.get(budget_s)
            if queue is None:
                queue = self._expiring[budget_s] = deque()
            queue.append(call)
            if self._expiry_wait is not None:
                waiter, self._expiry_wait = self._expiry_wait, None
                get_hub().loop.run_callback(waiter.switch, None)
        if fast:
            call.sink = _deliver
            call.conn.busy = True
            self._attempt(call, False)
            return _ASYNC
        call.sink = _wake
        self._attempt(call)
        if not call.done:
            call.waiter = Waiter()
            try:
                call.waiter.get()
            finally:
                call.waiter = None
        return call.result

    def _attempt(self, call: _Call, wait: bool = True) -> None:
        """Sends `call` to an instance, trying others while that is safe (see `_retry`).
        Runs in the caller's greenlet, in a greenlet of its own for a retry, or (without
        `wait`) in the event loop, handing the attempt to a greenlet of its own when it
        needs a connection opened."""
        while not call.done:
            route = call.route
            assert route.cluster is not None
            inst = (self._sticky_pick(call) if route.sticky
                    else route.cluster.pick(call.tried or ()))
            if inst is None:
                if call.err is None:
                    self.metrics.incr("gateway_no_healthy_instance")
                    call.err = errors.unavailable(f"no healthy instance of {route.service}",
                                                  retry_after_ms=100)
                self._finish(call, None, call.err)
                return
            call.instance = inst
            try:
                inst.submit(call, wait)
            except upstream.WouldWait:
                gevent.spawn(self._attempt, call)
                return
            except upstream.NotSent as e:
                if e.instance_fault:
                    inst.failed()
                if self._retry(call, inst, errors.unavailable(
                        f"{route.service}.{route.method}: {e}", retry_after_ms=100), True):
                    continue
                return
            if call.oneway:
                inst.succeeded()
                self._finish(call, None, None)
            elif call.done and call.link is not None:
                # Its deadline passed while a connection was being opened for it.
                call.link.abandon(call)
                inst.done(call)
            return

    def _sticky_pick(self, call: _Call) -> upstream.Instance | None:
        """The instance for a sticky call: the one its connection's earlier sticky calls to
        the service went to, while that one is still configured, eligible (not ejected, not
        draining) and has not just failed this call; otherwise the least loaded, which the
        connection then sticks to. State held by an instance that is gone or going is lost
        with it: the new instance answers for itself (an upload it never began is a 404)."""
        route, conn = call.route, call.conn
        cluster = route.cluster
        assert cluster is not None
        pins = conn.pins
        inst = pins.get(route.service) if pins is not None else None
        if (inst is not None and not call.tried and inst.eligible(time.monotonic())
                and inst in cluster.instances):
            return inst
        inst = cluster.pick(call.tried or ())
        if inst is not None:
            if pins is None:
                pins = conn.pins = {}
            pins[route.service] = inst
        return inst

    def _retry(self, call: _Call, inst: upstream.Instance, err: ServiceError,
               safe: bool) -> bool:
        """After a failed attempt: True when the call may go to another instance (the
        attempt was safe to repeat, within `max_attempts` and the retry budget); otherwise
        the call ends with `err`."""
        call.err = err
        if call.tried is None:
            call.tried = []
        call.tried.append(inst)
        if (not safe or len(call.tried) >= self.config.max_attempts
                or not self.retry_budget.withdraw()):
            self._finish(call, None, err)
            return False
        self.metrics.incr("gateway_retries")
        return True

    def _failed(self, call: _Call, exc: Exception) -> None:
        """The upstream connection holding `call` failed (in its reader or writer)."""
        inst = call.instance
        if call.done or inst is None:
            return
        inst.done(call)
        inst.failed()
        route = call.route
        if isinstance(exc, upstream.NotSent):
            err, safe = errors.unavailable(f"{route.service}.{route.method}: {exc}",
                                           retry_after_ms=100), True
        else:
            err = errors.service_error(
                errors.ErrorCode.UNAVAILABLE,
                f"{route.service}.{route.method}: {exc}; the request was sent and may have "
                "run", retryable=route.idempotent)
            safe = route.idempotent
        if self._retry(call, inst, err, safe):
            # Not here: this is an upstream connection's reader or the hub.
            gevent.spawn(self._attempt, call)

    def _expire_calls(self) -> None:
        """Ends the calls whose deadline passed with a 504 (every EXPIRY_TICK_S while calls
        are in flight; parked otherwise). One sweeper instead of a timer per call, which
        costs more than relaying a small call."""
        expiring = self._expiring
        while True:
            if not expiring:
                self._expiry_wait = Waiter()
                self._expiry_wait.get()
                continue
            gevent.sleep(EXPIRY_TICK_S)
            now = time.perf_counter()
            for budget, queue in list(expiring.items()):
                while queue and (queue[0].done or queue[0].deadline <= now):
                    call = queue.popleft()
                    if not call.done:
                        self._expired(call)
                if not queue:
                    del expiring[budget]

    def _expired(self, call: _Call) -> None:
        inst = call.instance
        if call.link is not None and inst is not None:
            call.link.abandon(call)
            inst.done(call)
        if inst is not None:
            inst.failed()
        self.metrics.incr("gateway_deadlines")
        route = call.route
        self._finish(call, None, errors.timeout(
            f"{route.service}.{route.method} did not finish within "
            f"{call.budget_s * 1000:.0f} ms", retryable=route.idempotent))

    def _finish(self, call: _Call, reply: bytes | None, err: ServiceError | None,
                body_at: int = 0) -> None:
        """Ends `call` once: counted, logged, and its reply (or error) handed to its sink.
        A reply's body starts at `body_at` (0: the reply is not a binary message)."""
        if call.done:
            return
        call.done = True
        self.inflight -= 1
        self.metrics.active -= 1
        route = call.route
        if err is None and reply is not None and not body_at:
            where = call.instance.address if call.instance is not None else ""
            err = errors.bad_gateway(f"upstream {where} sent a reply that is not a binary "
                                     "message")
        code = 0
        if err is not None:
            code = err.code
        elif body_at and reply is not None and reply.startswith(_ERROR_FIELD, body_at):
            # A ServiceError in field 1 of the result, whose first field is its i32 code:
            # counted by code without decoding the reply.
            code = int.from_bytes(reply[body_at + 6 : body_at + 10], "big", signed=True)
        elapsed = time.perf_counter() - call.started
        self.metrics.observe(route.labels, code, elapsed)
        rid = ""
        if err is not None:
            rid = self.new_request_id()
            err = errors.with_context(err, ORIGIN, rid)
        if self._access_log and access_log.isEnabledFor(logging.INFO):
            caller = call.conn.caller
            access_log.info("call", extra={
                "request_id": rid or self.new_request_id(), "peer": caller.ip,
                "caller": caller.key, "service": route.service, "method": route.method,
                "code": code, "ms": round(elapsed * 1000, 3),
                "upstream": call.instance.address if call.instance is not None else "",
                "oneway": call.oneway,
            })
        framed = call.sink is _deliver
        message: bytes | None = None
        if call.oneway:
            pass
        elif err is None and reply is not None:
            # The reply's header bytes are the route's (the caller's bare method name, a
            # REPLY or EXCEPTION), with the caller's seqid; its body is passed through.
            prefix = route.reply_prefixes.get(reply[3] & 0x07)
            if prefix is None:
                prefix = _message_prefix(reply[3] & 0x07, route.method)
            body = memoryview(reply)[body_at:]
            message = b"".join((
                (len(prefix) + 4 + len(body)).to_bytes(4, "big") if framed else b"",
                prefix, call.seqid.to_bytes(4, "big", signed=True), body))
        if message is None and err is not None:
            message = wire.error_reply(wire.BINARY_FIRST, route.method, call.seqid, err)
            if framed:
                message = wire.frame(message)
        call.sink(call, message)

    def _local(self, binary: bytes, conn: _Conn) -> bytes | None:
        """The Base service, answered by the gateway itself."""
        reply = self.base.dispatch_binary(binary, self._base_binary, conn.state)
        if reply is NOT_FAST:
            otrans = TMemoryBuffer()
            iprot = TBinaryProtocol(TMemoryBuffer(binary))
            if not self.base.dispatch(iprot, TBinaryProtocol(otrans), conn.state):
                return None
            return otrans.getvalue()
        if reply is None or isinstance(reply, bytes):
            return reply
        # The core's fast path may hand back the reply in pieces.
        return b"".join(reply)  # type: ignore[arg-type]

    def _deadline_s(self, service: str, method: str, headers: dict[str, str] | None) -> float:
        if headers:
            budget = headers.get(DEADLINE_HEADER)
            if budget is not None and budget.isdigit():
                return max(1, min(int(budget), MAX_DEADLINE_MS)) / 1000.0
        key = (service, method)
        got = self._deadlines.get(key)
        if got is None:
            ms = self.config.deadlines_ms.get(
                f"{service}.{method}",
                self.config.deadlines_ms.get(service, self.config.default_deadline_ms))
            got = self._deadlines[key] = ms / 1000.0
        return got

    def _is_idempotent(self, service: str, method: str) -> bool:
        key = (service, method)
        got = self._policy.get(key)
        if got is None:
            got = self._policy[key] = matches(self.idempotent, service, method)
        return got

    # -- drain ----------------------------------------------------------------------------

    def drain(self, grace_s: float | None = None) -> bool:
        """Stops accepting, lets in-flight calls finish (at most `grace_s`), closes the
        caller connections and upstream pools. True when nothing was cut short."""
        if grace_s is None:
            grace_s = self.config.drain_grace_ms / 1000.0
        self.draining = True
        self.board.state = Status.STOPPING
        self.server.close()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        self.backends.stop()
        clean = close_connections(self.connections, grace_s)
        if self._expirer is not None:
            self._expirer.kill(block=False)
        for cluster in self.clusters.values():
            cluster.close()
        self.board.state = Status.STOPPED
        return clean


def _keep(call: _Call, message: bytes | None) -> None:
    """Sink of a call answered before it was sent (denied, limited): the caller's greenlet
    takes the reply from `call.result`."""
    call.result = message


def _wake(call: _Call, message: bytes | None) -> None:
    """Sink of a call whose caller's greenlet waits for it (every dialect but framed binary,
    and oneway calls)."""
    call.result = message
    if call.waiter is not None:
        get_hub().loop.run_callback(call.waiter.switch, None)


def _deliver(call: _Call, message: bytes | None) -> None:
    """Sink of a framed binary caller's call: the framed reply goes straight to its socket."""
    if message is not None:
        call.conn.deliver(message)
    else:
        call.conn.settled()


def _tls_context(config: GatewayConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(config.tls.certfile, config.tls.keyfile or None)
    if config.tls.cafile:
        ctx.load_verify_locations(config.tls.cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
