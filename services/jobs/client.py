"""A gevent-native Gearman client: one multiplexed connection per gearmand, shared by all greenlets.

Server connection
    One TCP connection per configured gearmand (TCP_NODELAY), opened on first use and after a
    failure, with a per-server back-off (`RECONNECT_BACKOFF_*`) so a dead server costs one
    refused connect, not one per call. On connect the client sends OPTION_REQ "exceptions" so
    WORK_EXCEPTION texts reach it. A reader greenlet owns the receiving side.

    gearmand answers requests on a connection in order, so every request that expects a direct
    reply (JOB_CREATED, STATUS_RES, OPTION_RES, ERROR) is enqueued and sent under one lock, and
    the reader pops the oldest expectation for each reply. WORK_* packets are routed by job handle.

Jobs
    Every job carries a unique id: the caller's (hashed to 40 hex chars when longer than 64
    bytes, gearmand's limit) or a fresh UUID. The unique picks the server (a hash over the
    configured list, then the others in order when it is down), so the same unique always meets
    the same gearmand and coalesces there. On one connection, foreground jobs with the same
    (function, unique) are single-flighted locally: one SUBMIT, every caller gets the outcome.

Deadlines and failures
    A foreground call waits until its deadline (a `time.monotonic()` instant), not an idle
    timer; when it passes the caller gets a TIMEOUT result and the job keeps running on the
    server. If the connection drops after a job was sent, its waiters get ServiceError 1001
    (JOB_OUTCOME_UNKNOWN): the job may or may not have run, and it is never resubmitted. A
    submission that could not be sent completely to any server is a retryable 503. An ERROR
    packet becomes 503 (queue full), 413 (argument too large) or 502 (anything else).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.lock

from glammp.common.ttypes import ErrorCode, ServiceError
from glammp.jobs.ttypes import JobResult, JobState, JobStatus
from services.core import errors
from services.jobs import protocol as p

log = logging.getLogger(__name__)

#: How long a TCP connect to a gearmand may take, in seconds.
DEFAULT_CONNECT_TIMEOUT_S = 1.0
#: First and largest pause before reconnecting to a gearmand that refused or dropped us, in s.
RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 2.0
#: How long an admin text command may take, in seconds.
DEFAULT_ADMIN_TIMEOUT_S = 2.0
#: Largest admin reply accepted, in bytes.
MAX_ADMIN_REPLY_BYTES = 16 * 1024 * 1024
RECV_BYTES = 256 * 1024

OUTCOME_UNKNOWN = ErrorCode.JOB_OUTCOME_UNKNOWN

Reply = Callable[[p.Packet | None, ServiceError | None], None]


def normalize_unique(unique: str | None) -> bytes:
    """The unique id sent to gearmand: a UUID when absent, sha1 hex when over 64 bytes.

    Raises ServiceError 400 when it contains a NUL byte (it is a NUL-separated argument).
    """
    if not unique:
        return uuid.uuid4().hex.encode()
    raw = unique.encode("utf-8")
    if b"\0" in raw:
        raise errors.bad_request("unique must not contain NUL", argument="unique")
    if len(raw) > p.MAX_UNIQUE_BYTES:
        return hashlib.sha1(raw).hexdigest().encode()
    return raw


def check_function(name: str) -> bytes:
    """The function name as bytes; ServiceError 400 when empty, too long or holding NUL."""
    raw = name.encode("utf-8") if name else b""
    if not raw or b"\0" in raw or len(raw) > 512:
        raise errors.bad_request("function name must be 1-512 bytes without NUL", argument="name")
    return raw


def copy_error(err: ServiceError) -> ServiceError:
    return ServiceError(code=err.code, message=err.message, details=dict(err.details or {}),
                        retryable=err.retryable, retry_after_ms=err.retry_after_ms,
                        origin=err.origin, request_id=err.request_id)


def job_state(packet: p.Packet, with_clients: bool) -> JobState:
    """A STATUS_RES or STATUS_RES_UNIQUE packet as a JobState."""
    try:
        known, running, num, den = (int(a or b"0") for a in packet.args[1:5])
        clients = int(packet.arg(5) or b"0") if with_clients else None
    except ValueError:
        raise errors.bad_gateway("gearmand sent a malformed status reply") from None
    return JobState(known=bool(known), running=bool(running), numerator=num, denominator=den,
                    waiting_clients=clients)


def error_from_packet(packet: p.Packet, server: str) -> ServiceError:
    """An ERROR packet (`code\\0text`) as the ServiceError the caller sees."""
    code = packet.arg(0).decode("utf-8", "replace")
    text = packet.arg(1).decode("utf-8", "replace")
    if code == "QUEUE_ERROR":
        return errors.unavailable(f"gearmand {server}: {text}", server=server, gearman=code)
    if code == "ARGUMENT_TOO_LARGE":
        return errors.too_large(f"gearmand {server}: {text}", server=server, gearman=code)
    return errors.bad_gateway(f"gearmand {server}: {code} {text}", server=server, gearman=code)


@dataclass(eq=False)
class _Job:
    """A foreground job as this connection sees it; shared by every local caller of it."""

    key: tuple[bytes, bytes]
    handle: bytes = b""
    status: int = -1
    data: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    warnings: list[bytes] = field(default_factory=list)
    numerator: int = 0
    denominator: int = 0
    exception_text: bytes = b""
    error: ServiceError | None = None
    done: gevent.event.Event = field(default_factory=gevent.event.Event)

    def result(self, timed_out: bool = False) -> JobResult:
        return JobResult(
            status=JobStatus.TIMEOUT if timed_out else self.status,
            data=self.data,
            chunks=list(self.chunks),
            warnings=list(self.warnings),
            numerator=self.numerator,
            denominator=self.denominator,
            exception_text=self.exception_text,
            handle=self.handle.decode("utf-8", "replace"),
        )


class ServerConnection:
    """The multiplexed connection to one gearmand; see the module docstring.

    `request()` and `submit_*()` raise `_NotSent` when the bytes did not reach the server
    (the caller may fail over); any failure after that is reported to the waiter as 1001.
    """

    def __init__(self, host: str, port: int, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._send_lock = gevent.lock.Semaphore()
        self._connect_lock = gevent.lock.Semaphore()
        self._replies: deque[Reply] = deque()
        self._by_handle: dict[bytes, list[_Job]] = {}
        self._by_key: dict[tuple[bytes, bytes], _Job] = {}
        self._down_until = 0.0
        self._backoff_s = RECONNECT_BACKOFF_MIN_S
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def available(self) -> bool:
        """False while this server is in its reconnect back-off after a failure."""
        return self._sock is not None or time.monotonic() >= self._down_until

    # -- connection life cycle --------------------------------------------------------

    def _ensure(self, deadline: float) -> socket.socket:
        """The open socket, connecting first if needed; raises `_NotSent` when it cannot."""
        sock = self._sock
        if sock is not None:
            return sock
        with self._connect_lock:
            if self._sock is not None:
                return self._sock
            if self._closed:
                raise _NotSent(errors.unavailable("client closed", server=self.address))
            if time.monotonic() < self._down_until:
                raise _NotSent(errors.unavailable(
                    f"gearmand {self.address} is down", server=self.address,
                    retry_after_ms=int((self._down_until - time.monotonic()) * 1000) + 1))
            timeout_s = max(0.001, min(self.connect_timeout_s, deadline - time.monotonic()))
            try:
                sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Deadlines are per call; the socket itself never times out.
                sock.settimeout(None)
            except OSError as e:
                self._mark_down()
                raise _NotSent(errors.unavailable(
                    f"cannot connect to gearmand {self.address}: {e}", server=self.address
                )) from None
            self._sock = sock
            self._reader = gevent.spawn(self._read_loop, sock)
            self._backoff_s = RECONNECT_BACKOFF_MIN_S
            # Ask for WORK_EXCEPTION texts before any job is sent on this connection.
            self._send(p.encode(p.OPTION_REQ, b"exceptions"), self._ignore_reply)
        return sock

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self._backoff_s
        self._backoff_s = min(RECONNECT_BACKOFF_MAX_S, self._backoff_s * 2)

    def _ignore_reply(self, packet: p.Packet | None, err: ServiceError | None) -> None:
        if packet is not None and packet.type == p.ERROR:
            log.warning("gearmand %s refused an option: %r", self.address, packet.args)

    def close(self) -> None:
        """Closes the connection for good; waiters get 503."""
        self._closed = True
        self._drop(None, errors.unavailable("client closed", server=self.address))

    def _drop(self, sock: socket.socket | None, err: ServiceError) -> None:
        """Closes `sock` (None: whatever is open) and fails everything pending on it."""
        if sock is not None and sock is not self._sock:
            return
        sock = self._sock
        self._sock = None
        if sock is not None:
            sock.close()
            if not self._closed:
                self._mark_down()
        reader, self._reader = self._reader, None
        replies, self._replies = self._replies, deque()
        jobs = [j for js in self._by_handle.values() for j in js] + list(self._by_key.values())
        self._by_handle = {}
        self._by_key = {}
        for reply in replies:
            reply(None, err)
        for job in jobs:
            if not job.done.is_set():
                job.error = err
                job.done.set()
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def _lost(self) -> ServiceError:
        return errors.service_error(
            OUTCOME_UNKNOWN,
            f"connection to gearmand {self.address} dropped; the job may or may not have run",
            retryable=False, details={"server": self.address})

    def _read_loop(self, sock: socket.socket) -> None:
        reader = p.PacketReader(p.RES)
        try:
            while True:
                data = sock.recv(RECV_BYTES)
                if not data:
                    log.info("gearmand %s closed the connection", self.address)
                    break
                for packet in reader.feed(data):
                    self._dispatch(packet)
        except (OSError, p.ProtocolError) as e:
            if self._sock is not sock:
                return  # closed on purpose by _drop or close()
            log.warning("connection to gearmand %s failed: %s", self.address, e)
        except Exception:
            log.exception("reader for gearmand %s failed", self.address)
        self._drop(sock, self._lost())

    def _dispatch(self, packet: p.Packet) -> None:
        t = packet.type
        if t in (p.JOB_CREATED, p.STATUS_RES, p.STATUS_RES_UNIQUE, p.OPTION_RES, p.ERROR,
                 p.ECHO_RES):
            if not self._replies:
                raise p.ProtocolError(f"unexpected reply type {t} with nothing pending")
            self._replies.popleft()(packet, None)
            return
        handle = packet.arg(0)
        jobs = self._by_handle.get(handle)
        if not jobs:
            # A job whose every caller left (or a duplicate terminal packet): nothing to do.
            log.debug("gearmand %s: packet %d for unknown handle %r", self.address, t, handle)
            return
        for job in jobs:
            self._apply(job, packet)
        if t in (p.WORK_COMPLETE, p.WORK_FAIL, p.WORK_EXCEPTION):
            del self._by_handle[handle]
            for job in jobs:
                if self._by_key.get(job.key) is job:
                    del self._by_key[job.key]
                job.done.set()

    @staticmethod
    def _apply(job: _Job, packet: p.Packet) -> None:
        t = packet.type
        if t == p.WORK_DATA:
            job.chunks.append(packet.arg(1))
        elif t == p.WORK_WARNING:
            job.warnings.append(packet.arg(1))
        elif t == p.WORK_STATUS:
            try:
                job.numerator = int(packet.arg(1) or b"0")
                job.denominator = int(packet.arg(2) or b"0")
            except ValueError:
                log.warning("malformed WORK_STATUS %r", packet.args)
        elif t == p.WORK_COMPLETE:
            job.status = JobStatus.COMPLETE
            job.data = packet.arg(1)
        elif t == p.WORK_FAIL:
            job.status = JobStatus.FAILED
        elif t == p.WORK_EXCEPTION:
            job.status = JobStatus.EXCEPTION
            job.exception_text = packet.arg(1)

    # -- sending ------------------------------------------------------------------------

    def _send(self, data: bytes, reply: Reply) -> None:
        """Enqueues `reply` and sends `data` as one step; `_NotSent` if the send failed.

        A failed `sendall` means the packet did not fully reach the kernel, so gearmand cannot
        have acted on it; other callers' earlier packets are failed with 1001 by `_drop`.
        """
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise _NotSent(errors.unavailable(
                    f"connection to gearmand {self.address} is closed", server=self.address))
            self._replies.append(reply)
            try:
                sock.sendall(data)
            except OSError as e:
                if self._replies and self._replies[-1] is reply:
                    self._replies.pop()
                self._drop(sock, self._lost())
                raise _NotSent(errors.unavailable(
                    f"cannot send to gearmand {self.address}: {e}", server=self.address
                )) from None

    def request(self, data: bytes, deadline: float) -> p.Packet:
        """Sends one request and returns its direct reply (any ERROR becomes a ServiceError).

        Raises `_NotSent` before the request left, 504 at the deadline, 1001 on a drop.
        """
        self._ensure(deadline)
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()

        def on_reply(packet: p.Packet | None, err: ServiceError | None) -> None:
            if err is not None:
                result.set_exception(err)
            else:
                result.set(packet)

        self._send(data, on_reply)
        # wait() rather than get(timeout=): a caller's own gevent.Timeout must pass through.
        if not result.wait(timeout=max(0.0, deadline - time.monotonic())):
            raise errors.timeout(f"gearmand {self.address} did not answer in time",
                                 server=self.address)
        packet: p.Packet = result.get()
        if packet.type == p.ERROR:
            raise error_from_packet(packet, self.address)
        return packet

    def submit_foreground(self, ptype: int, func: bytes, unique: bytes, workload: bytes,
                          deadline: float) -> _Job:
        """Sends the job (or joins the same (func, unique) already in flight here)."""
        self._ensure(deadline)
        # gearmand coalesces the unique "-" on the payload, so single-flight must do the same.
        key = (func, b"-" + hashlib.sha1(workload).digest()) if unique == b"-" else (func, unique)
        job = self._by_key.get(key)
        if job is not None:
            return job
        job = _Job(key)

        def on_created(packet: p.Packet | None, err: ServiceError | None) -> None:
            if err is None and packet is not None and packet.type == p.ERROR:
                err = error_from_packet(packet, self.address)
            if err is not None or packet is None:
                job.error = err
                if self._by_key.get(key) is job:
                    del self._by_key[key]
                job.done.set()
                return
            job.handle = packet.arg(0)
            self._by_handle.setdefault(job.handle, []).append(job)

        self._by_key[key] = job
        try:
            self._send(p.encode(ptype, func, unique, workload), on_created)
        except _NotSent:
            if self._by_key.get(key) is job:
                del self._by_key[key]
            raise
        return job


class _NotSent(Exception):
    """The request never reached the server: safe to try the next one. Carries the 503."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


def parse_server(text: str) -> tuple[str, int]:
    """"host:port" → (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server must be host:port, got {text!r}")
    return host, int(port)


class GearmanClient:
    """Submits jobs to a list of gearmand servers ("host:port"); safe to share between greenlets.

    Every method takes `deadline`, a `time.monotonic()` instant. Errors are ServiceError: 400
    for bad arguments, 503 (retryable) when no server could be reached, 504 when a direct
    reply did not arrive in time, 1001 when a connection dropped after sending.
    """

    def __init__(self, servers: Sequence[str],
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 admin_timeout_s: float = DEFAULT_ADMIN_TIMEOUT_S) -> None:
        if not servers:
            raise ValueError("at least one gearmand server is needed")
        self.servers = [parse_server(s) for s in servers]
        self.addresses = [f"{h}:{port}" for h, port in self.servers]
        self.admin_timeout_s = admin_timeout_s
        self._conns = [ServerConnection(h, port, connect_timeout_s) for h, port in self.servers]

    def close(self) -> None:
        for conn in self._conns:
            conn.close()

    def connected(self, address: str) -> bool:
        """Whether the connection to `address` is open now (for tests and health)."""
        return self._conns[self.addresses.index(address)].connected

    def order(self, unique: bytes) -> list[ServerConnection]:
        """Servers to try for `unique`: its hashed home first, then the rest in list order."""
        start = zlib.crc32(unique) % len(self._conns)
        return self._conns[start:] + self._conns[:start]

    def _each(self, conns: list[ServerConnection], deadline: float,
              attempt: Callable[[ServerConnection], object]) -> object:
        """Runs `attempt` on the first server that takes the request; 503 when none does."""
        last: ServiceError | None = None
        candidates = [c for c in conns if c.available()] or conns
        for conn in candidates:
            if time.monotonic() >= deadline:
                break
            try:
                return attempt(conn)
            except _NotSent as e:
                last = e.error
        if last is None:
            last = errors.unavailable("no gearmand could take the request before the deadline")
        raise last

    def submit(self, func: str, workload: bytes, unique: str | None, priority: int,
               deadline: float) -> JobResult:
        """Runs a foreground job and waits for its outcome until `deadline`.

        Returns a JobResult (COMPLETE / FAILED / EXCEPTION, or TIMEOUT with whatever streamed
        in so far). Raises 400, 503, 1001 or an ERROR-packet error as described above.
        """
        fn = check_function(func)
        uq = normalize_unique(unique)
        ptype = p.SUBMIT_TYPES[(priority, False)]

        def attempt(conn: ServerConnection) -> _Job:
            return conn.submit_foreground(ptype, fn, uq, workload, deadline)

        job: _Job = self._each(self.order(uq), deadline, attempt)  # type: ignore[assignment]
        if not job.done.wait(timeout=max(0.0, deadline - time.monotonic())):
            return job.result(timed_out=True)
        if job.error is not None:
            # One error object is shared by every caller of the job: each raises its own copy
            # so tracebacks do not pile up on it (ServiceError instances are immutable).
            raise copy_error(job.error)
        return job.result()

    def submit_background(self, func: str, workload: bytes, unique: str | None, priority: int,
                          deadline: float) -> tuple[str, str]:
        """Queues a background job; returns (handle, unique used). 503, 504, 1001 on failure."""
        fn = check_function(func)
        uq = normalize_unique(unique)
        ptype = p.SUBMIT_TYPES[(priority, True)]
        data = p.encode(ptype, fn, uq, workload)

        def attempt(conn: ServerConnection) -> p.Packet:
            return conn.request(data, deadline)

        packet: p.Packet = self._each(self.order(uq), deadline, attempt)  # type: ignore[assignment]
        return packet.arg(0).decode("utf-8", "replace"), uq.decode("utf-8", "replace")

    def _status_from(self, conns: list[ServerConnection], data: bytes, with_clients: bool,
                     deadline: float) -> JobState:
        """Asks each server in turn; the first that knows the job answers. Unknown otherwise.

        Raises 503 only when no server answered at all.
        """
        answered = False
        last: ServiceError | None = None
        for conn in conns:
            try:
                packet = conn.request(data, deadline)
            except _NotSent as e:
                last = e.error
                continue
            except ServiceError as e:
                last = e
                continue
            answered = True
            state = job_state(packet, with_clients)
            if state.known:
                return state
        if not answered and last is not None:
            raise last
        return JobState(known=False, running=False, numerator=0, denominator=0,
                        waiting_clients=0 if with_clients else None)

    def status(self, handle: str, deadline: float) -> JobState:
        """GET_STATUS by handle. Handles made with a `H:host:port:` prefix (see
        `local.gearmand_argv`) go straight to their server; others are asked of every server."""
        raw = handle.encode("utf-8")
        if not raw or b"\0" in raw:
            raise errors.bad_request("handle must be non-empty without NUL", argument="handle")
        home = [c for c in self._conns if raw.startswith(f"H:{c.address}:".encode())]
        return self._status_from(home or self._conns, p.encode(p.GET_STATUS, raw), False,
                                 deadline)

    def status_by_unique(self, unique: str, deadline: float) -> JobState:
        """GET_STATUS_UNIQUE; the unique is normalized as on submit (hashed when long)."""
        if not unique:
            raise errors.bad_request("unique must not be empty", argument="unique")
        uq = normalize_unique(unique)
        return self._status_from(self.order(uq), p.encode(p.GET_STATUS_UNIQUE, uq), True,
                                 deadline)

    # -- admin text protocol ----------------------------------------------------------------

    def admin(self, address: str, command: str, deadline: float, listing: bool = True) -> list[str]:
        """Runs one admin command on a fresh connection; returns the reply lines.

        `listing` replies end with "."; others are one line. 503 when the server cannot be
        reached, 504 when the reply is late, 502 when it is malformed or too large.
        """
        host, port = parse_server(address)
        timeout_s = max(0.001, min(self.admin_timeout_s, deadline - time.monotonic()))
        limit = gevent.Timeout(timeout_s)
        try:
            with limit, socket.create_connection((host, port)) as sock:
                sock.sendall(command.encode("utf-8") + b"\n")
                buf = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise errors.bad_gateway(f"gearmand {address} closed during {command!r}")
                    buf += chunk
                    if len(buf) > MAX_ADMIN_REPLY_BYTES:
                        raise errors.bad_gateway(f"gearmand {address}: admin reply too large")
                    if listing:
                        lines = p.admin_lines(buf)
                        if lines is not None:
                            return lines
                    elif p.admin_line_complete(buf):
                        return [buf.decode("utf-8", "replace").strip()]
        except gevent.Timeout as t:
            if t is not limit:
                raise
            raise errors.timeout(f"gearmand {address} did not answer {command!r} in time",
                                 server=address) from None
        except OSError as e:
            raise errors.unavailable(f"cannot reach gearmand {address}: {e}",
                                     server=address) from None

    def cancel(self, handle: str, deadline: float) -> bool:
        """`cancel job HANDLE` on every server that may hold it; True when one said OK."""
        if not handle or any(c in handle for c in "\r\n\0 "):
            raise errors.bad_request("handle must be non-empty without spaces", argument="handle")
        home = [a for a in self.addresses if handle.startswith(f"H:{a}:")]
        ok = False
        for address in home or self.addresses:
            reply = self.admin(address, f"cancel job {handle}", deadline, listing=False)
            ok = ok or reply[0].startswith("OK")
        return ok
