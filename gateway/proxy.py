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
from typing import Any

import gevent
from gevent.server import StreamServer
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer, TTransportBase, TTransportException

import glammp.base.Base
from gateway import upstream, wire
from gateway.access import AccessPolicy, Caller
from gateway.backends import BackendWatch
from gateway.config import MAX_DEADLINE_MS, GatewayConfig, matches
from gateway.limits import RateLimiter, RetryBudget
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
#: Bytes read from a caller socket at once.
RECV_BYTES = 64 * 1024
#: Bytes of an oversized frame kept to read its message header for the 413.
OVERSIZED_HEAD_BYTES = 4096
#: Containers in a translated message may hold at most this many elements.
MAX_CONTAINER_ITEMS = 1_000_000

# What a malformed message raises while being decoded or translated.
_MALFORMED = (wire.WireError, TProtocolException, TTransportException, framing.FramingError,
              struct.error, ValueError, UnicodeDecodeError, EOFError, OverflowError,
              TypeError, KeyError, IndexError, RecursionError)


class _Closed(Exception):
    """The caller closed its connection."""


class _Stream(TTransportBase):
    """Buffered reads from a caller socket (plain or TLS); also a Thrift transport for
    decoding unframed messages, counting bytes so one message cannot exceed `limit`."""

    def __init__(self, sock: Any, raw: socket.socket | None, conn: _Conn, limit: int) -> None:
        self.sock = sock
        # The OS socket for the fast path; None for TLS, whose bytes must go through it.
        self.raw = raw
        self.conn = conn
        self.buf = bytearray()
        self.limit = limit
        self.counted = 0

    def fill(self) -> None:
        data = sockets.recv(self.sock, self.raw, RECV_BYTES)
        if not data:
            raise _Closed()
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


class _Conn:
    """One caller connection: who it is and whether a call is running."""

    __slots__ = ("caller", "busy", "greenlet", "last_active", "state")

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.busy = False
        self.greenlet = gevent.getcurrent()
        self.last_active = time.monotonic()
        self.state = ConnectionState(peer=caller.ip)



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
        self.clusters = upstream.clusters(
            config, self.metrics, self.clusters,
            on_new=lambda c: c.start() if self._sweeper is not None else None)
        self.rate.configure(config)
        self.access = AccessPolicy(config)
        self.retry_budget = RetryBudget(config.retry_budget_ratio, config.retry_min_per_s)
        self.idempotent = frozenset(config.idempotent)
        self.oneway = frozenset(config.oneway)
        self._deadlines: dict[tuple[str, str], float] = {}
        self._policy: dict[tuple[str, str], bool] = {}

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.address[:2]
        return host, port

    def start(self) -> None:
        self.server.start()
        for cluster in self.clusters.values():
            cluster.start()
        self._sweeper = gevent.spawn(self._sweep_idle)
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
            stream = _Stream(stream_sock, raw, conn, self.config.max_frame_bytes)
            stream.fill()
            if framing.is_unframed(stream.buf[0]):
                self._serve_unframed(stream, conn, stream.buf[0])
            else:
                self._serve_framed(stream, conn)
        except _Closed:
            pass
        except (framing.FramingError, wire.WireError, ssl.SSLError) as e:
            self.metrics.incr("connections_refused")
            log.info("closing %s: %s", addr[0], e)
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

    def _serve_framed(self, stream: _Stream, conn: _Conn) -> None:
        max_frame = self.config.max_frame_bytes
        sock = stream.sock
        buf = stream.buf
        while not self.draining:
            while len(buf) < 4:
                stream.fill()
            size = int.from_bytes(buf[:4], "big", signed=True)
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
                reply = self._serve_frame(payload, conn)
            if reply:
                sockets.send_all(sock, stream.raw, reply)
            conn.last_active = time.monotonic()
            conn.busy = False

    def _oversized(self, stream: _Stream, size: int) -> bytes:
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
            except wire.WireError as e:
                return self._malformed(first, payload, e)
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

    def _serve_unframed(self, stream: _Stream, conn: _Conn, first: int) -> None:
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
            except _Closed:
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

    def _route_name(self, name: str) -> tuple[str, str]:
        service, sep, method = name.partition(":")
        if not sep:
            return self.config.default_service, name
        return service, method

    def _route(self, h: wire.Header, binary: bytes, conn: _Conn,
               headers: dict[str, str] | None) -> bytes | None:
        """Serves one binary message; returns the binary reply with the caller's seqid and
        the bare method name (as Apache's multiplexed processor answers, and as Go's and
        Node's clients check), or None when there is none (oneway)."""
        service, method = self._route_name(h.name)
        if service == BASE_SERVICE and service not in self.clusters:
            try:
                return self._local(binary, conn)
            except _MALFORMED as e:
                return self._malformed(wire.BINARY_FIRST, binary, e)
        cluster = self.clusters.get(service)
        if cluster is None or h.mtype not in (TMessageType.CALL, TMessageType.ONEWAY):
            self.metrics.count_unknown()
            kind = (TApplicationException.UNKNOWN_METHOD if cluster is None
                    else TApplicationException.INVALID_MESSAGE_TYPE)
            return wire.application_error(wire.BINARY_FIRST, method, h.seqid, kind,
                                          f"unknown service or method: {h.name!r}")
        started = time.perf_counter()
        oneway = h.mtype == TMessageType.ONEWAY or (
            bool(self.oneway) and f"{service}.{method}" in self.oneway)
        caller = conn.caller
        err: ServiceError | None = None
        reply: bytes | None = None
        where = ""
        wait_ms = 0
        if not self.access.allowed(caller, service, method):
            err = errors.forbidden(f"{service}.{method} is not allowed for {caller.key}",
                                   caller=caller.key)
        elif (wait_ms := self.rate.take(caller.key, service)) > 0:
            err = errors.too_many_requests(
                f"{caller.key} is over its rate limit for {service}", wait_ms)
        elif self.inflight >= self.config.max_inflight:
            err = errors.unavailable(
                f"gateway busy: {self.config.max_inflight} requests in flight",
                retry_after_ms=50)
        else:
            self.inflight += 1
            self.metrics.active += 1
            try:
                reply, err, where = self._forward(cluster, h, binary, conn, oneway,
                                                  service, method, headers)
            finally:
                self.inflight -= 1
                self.metrics.active -= 1
        if err is not None:
            code = err.code
        elif reply is not None:
            code = _reply_code(reply)
        else:
            code = 0
        elapsed = time.perf_counter() - started
        self.metrics.observe((service, method), code, elapsed)
        rid = ""
        if err is not None:
            rid = self.new_request_id()
            err = errors.with_context(err, ORIGIN, rid)
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info("call", extra={
                "request_id": rid or self.new_request_id(), "peer": caller.ip,
                "caller": caller.key, "service": service, "method": method, "code": code,
                "ms": round(elapsed * 1000, 3), "upstream": where, "oneway": oneway,
            })
        if oneway:
            return None
        if err is not None:
            return wire.error_reply(wire.BINARY_FIRST, method, h.seqid, err)
        assert reply is not None
        try:
            rh = wire.parse_binary(reply)
        except wire.WireError:
            err = errors.with_context(errors.bad_gateway(
                f"upstream {where} sent a reply that is not a binary message"), ORIGIN,
                self.new_request_id())
            return wire.error_reply(wire.BINARY_FIRST, method, h.seqid, err)
        return wire.rename_reply(reply, rh, method, h.seqid)

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

    def _forward(self, cluster: upstream.Cluster, h: wire.Header, binary: bytes, conn: _Conn,
                 oneway: bool, service: str, method: str,
                 headers: dict[str, str] | None) -> tuple[bytes | None, ServiceError | None, str]:
        """Sends the call to an instance, retrying where safe. Returns (reply, error, the
        instance that answered or failed last)."""
        idempotent = self._is_idempotent(service, method)
        budget_s = self._deadline_s(service, method, headers)
        body = memoryview(binary)[h.body_at:]
        name = h.name if ":" in h.name else f"{service}:{method}"
        tried: list[upstream.Instance] = []
        current: upstream.Instance | None = None
        err: ServiceError | None = None
        self.retry_budget.deposit()
        # A new timer per call: a gevent timer restarted after firing (or racing its own
        # expiry) was seen to fire again at once, so they are not reused.
        timer = gevent.Timeout(budget_s)
        timer.start()
        try:
            while True:
                current = cluster.pick(tried)
                if current is None:
                    if err is None:
                        self.metrics.incr("gateway_no_healthy_instance")
                        err = errors.unavailable(f"no healthy instance of {service}",
                                                 retry_after_ms=100)
                    return None, err, ",".join(i.address for i in tried)
                try:
                    reply = current.call(h.mtype, name, body, oneway)
                    current.succeeded()
                    return reply, None, current.address
                except upstream.NotSent as e:
                    if e.instance_fault:
                        current.failed()
                    err = errors.unavailable(f"{service}.{method}: {e}", retry_after_ms=100)
                    safe = True
                except upstream.LostAfterSend as e:
                    current.failed()
                    err = errors.service_error(
                        errors.ErrorCode.UNAVAILABLE,
                        f"{service}.{method}: {e}; the request was sent and may have run",
                        retryable=idempotent)
                    safe = idempotent
                tried.append(current)
                if (not safe or len(tried) >= self.config.max_attempts
                        or not self.retry_budget.withdraw()):
                    return None, err, current.address
                self.metrics.incr("gateway_retries")
        except gevent.Timeout as t:
            if t is not timer:
                raise
            if current is not None:
                current.failed()
            self.metrics.incr("gateway_deadlines")
            return None, errors.timeout(
                f"{service}.{method} did not finish within {budget_s * 1000:.0f} ms",
                retryable=idempotent), current.address if current else ""
        finally:
            timer.close()

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
        for cluster in self.clusters.values():
            cluster.close()
        self.board.state = Status.STOPPED
        return clean


def _reply_code(reply: bytes) -> int:
    """The ServiceError code of a binary reply, read without decoding it: a result whose
    first field is field 1, a struct whose first field is the i32 code (0 otherwise)."""
    at = 12 + int.from_bytes(reply[4:8], "big", signed=True)
    if reply[at : at + 3] == b"\x0c\x00\x01" and reply[at + 3 : at + 6] == b"\x08\x00\x01":
        return int.from_bytes(reply[at + 6 : at + 10], "big", signed=True)
    return 0


def _tls_context(config: GatewayConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(config.tls.certfile, config.tls.keyfile or None)
    if config.tls.cafile:
        ctx.load_verify_locations(config.tls.cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
