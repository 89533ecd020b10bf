"""The worker runner: Python functions served as Gearman workers, N jobs at a time with gevent.

A function takes one `WorkerJob` and returns the result (`bytes`, or `str` sent as UTF-8, or
None for an empty result). While it runs it may call `job.send_status(num, den)`,
`job.send_data(chunk)` and `job.send_warning(text)`; callers of the service see these in
`JobResult`. Raising `JobFailed` sends WORK_FAIL; any other exception sends WORK_EXCEPTION with
`"ExceptionType: message"` as its text (and is logged with its traceback).

Connections
    One connection per gearmand (TCP_NODELAY). On every (re)connect the worker sends
    SET_CLIENT_ID and CAN_DO for each function, then loops GRAB_JOB_UNIQ → JOB_ASSIGN_UNIQ |
    NO_JOB → PRE_SLEEP → NOOP. It never uses CAN_DO_TIMEOUT (gearmand 1.1.20 may hang with
    it). When gearmand goes away the worker reconnects with a doubling back-off
    (`RECONNECT_BACKOFF_*`); jobs that were running on the lost connection finish, but their
    results cannot be delivered (gearmand requeues such jobs to another worker).

Concurrency and stopping
    At most `concurrency` jobs run at once across all servers. After `max_jobs` jobs (0 = no
    limit) the worker stops grabbing, finishes the running ones and `run()` returns, so a
    supervisor can start a fresh process (bounded memory growth). `stop()` — wired to SIGTERM
    by the CLI — does the same at once.

Background results
    With a `ResultStore`, every finished job's outcome is stored under its handle so that the
    jobs service's `fetch_result(handle)` can return it (see `results.py` for why a shared
    SQLite file).
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.lock

from glammp.jobs.ttypes import JobResult, JobStatus
from services.jobs import protocol as p
from services.jobs.client import parse_server
from services.jobs.results import ResultStore

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_CONCURRENCY = 1
RECV_BYTES = 256 * 1024
#: Most GRAB_JOB_UNIQ requests in flight on one connection.
GRAB_PIPELINE_MAX = 8


class JobFailed(Exception):
    """Raise from a job function to answer WORK_FAIL (a failure without an exception text)."""


class WorkerJob:
    """One assigned job: its handle, function, unique and workload (bytes), plus the calls
    that stream progress to the waiting clients. Sends after the connection dropped are
    dropped silently (the job will be retried elsewhere)."""

    def __init__(self, conn: _WorkerConnection, handle: bytes, function: str, unique: bytes,
                 workload: bytes) -> None:
        self._conn = conn
        # The job belongs to the connection it was assigned on; after a reconnect gearmand
        # has requeued it, so nothing about it may go out on the new socket.
        self._sock = conn.current_socket()
        self.handle = handle
        self.function = function
        self.unique = unique
        self.workload = workload
        self.chunks: list[bytes] = []
        self.warnings: list[bytes] = []
        self.numerator = 0
        self.denominator = 0

    def send_status(self, numerator: int, denominator: int) -> None:
        self.numerator, self.denominator = numerator, denominator
        self.send(p.encode(p.WORK_STATUS, self.handle, str(numerator).encode(),
                           str(denominator).encode()))

    def send_data(self, chunk: bytes | str) -> None:
        data = _as_bytes(chunk)
        self.chunks.append(data)
        self.send(p.encode(p.WORK_DATA, self.handle, data))

    def send_warning(self, text: bytes | str) -> None:
        data = _as_bytes(text)
        self.warnings.append(data)
        self.send(p.encode(p.WORK_WARNING, self.handle, data))

    def send(self, packet: bytes) -> None:
        """Sends a packet about this job on the connection it came from (dropped if gone)."""
        self._conn.send(packet, self._sock)


JobFunction = Callable[[WorkerJob], bytes | str | None]


def _as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a job result must be bytes, str or None, not {type(value).__name__}")


def load_function(spec: str) -> tuple[str, JobFunction]:
    """"[name=]pkg.mod:func" → (Gearman function name, callable).

    The name defaults to the attribute after the colon. ValueError when malformed or not
    importable.
    """
    name, eq, path = spec.partition("=")
    if not eq:
        name, path = "", spec
    module_name, colon, attr = path.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"function must be [name=]package.module:function, got {spec!r}")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {path!r}: {e}") from None
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable")
    return name or attr.rsplit(".", 1)[-1], obj  # type: ignore[return-value]


@dataclass
class _Slots:
    """Shared job accounting across connections."""

    semaphore: gevent.lock.BoundedSemaphore
    max_jobs: int
    reserved: int = 0

    def exhausted(self) -> bool:
        return self.max_jobs > 0 and self.reserved >= self.max_jobs


class _WorkerConnection:
    """The worker's connection to one gearmand and its grab loop."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._send_lock = gevent.lock.Semaphore()

    def current_socket(self) -> socket.socket | None:
        return self._sock

    def send(self, data: bytes, via: socket.socket | None = None) -> None:
        """Sends on the current socket (or only on `via` when it is still the current one);
        a failure closes the socket and the grab loop reconnects."""
        sock = self._sock
        if sock is None or (via is not None and via is not sock):
            log.info("dropping a packet for %s: its connection is gone", self.address)
            return
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as e:
                log.warning("send to gearmand %s failed: %s", self.address, e)
                sock.close()

    def run(self) -> None:
        """Connects, serves, reconnects with back-off until the worker stops.

        On a stop the socket stays open so running jobs can still send their outcome;
        `Worker.run` closes it once they are done.
        """
        backoff = RECONNECT_BACKOFF_MIN_S
        while not self.worker.stopping:
            try:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=DEFAULT_CONNECT_TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            except OSError as e:
                log.info("cannot connect to gearmand %s (%s); retrying in %.2fs",
                         self.address, e, backoff)
                gevent.sleep(backoff)
                backoff = min(RECONNECT_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = RECONNECT_BACKOFF_MIN_S
            self._sock = sock
            try:
                self._serve(sock)
                return
            except (OSError, p.ProtocolError, EOFError) as e:
                log.warning("connection to gearmand %s lost: %s", self.address, e)
                self._sock = None
                sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        reader = p.PacketReader(p.RES)
        pending: list[p.Packet] = []

        def next_packet() -> p.Packet:
            while not pending:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise EOFError("gearmand closed the connection")
                pending.extend(reader.feed(data))
            return pending.pop(0)

        hello = [p.encode(p.SET_CLIENT_ID, self.worker.client_id.encode())]
        hello += [p.encode(p.CAN_DO, name.encode()) for name in self.worker.functions]
        self.send(b"".join(hello))
        slots = self.worker.slots
        # GRABs sent and not yet answered; each holds a slot. Pipelining them saves one round
        # trip per job under load; the depth grows by one per assigned job up to
        # GRAB_PIPELINE_MAX and falls back to a single GRAB after a sleep, so an idle worker
        # does not make gearmand answer a burst of NO_JOBs for every NOOP.
        outstanding = 0
        sleeping = False

        def grab(n: int) -> int:
            nonlocal outstanding
            sent = 0
            while (sent < n and outstanding < GRAB_PIPELINE_MAX and not self.worker.stopping
                   and not slots.exhausted() and slots.semaphore.acquire(blocking=False)):
                slots.reserved += 1
                outstanding += 1
                sent += 1
            if sent:
                self.send(p.encode(p.GRAB_JOB_UNIQ) * sent)
            return sent

        try:
            while not self.worker.stopping:
                if not sleeping and outstanding == 0 and grab(1) == 0:
                    if slots.exhausted():
                        return
                    # Every slot is busy: wait for a job to finish, then grab again.
                    slots.semaphore.acquire()
                    slots.semaphore.release()
                    continue
                packet = next_packet()
                if packet.type == p.JOB_ASSIGN_UNIQ:
                    outstanding -= 1
                    self.worker.start_job(self, packet)
                    grab(2)
                elif packet.type == p.NO_JOB:
                    outstanding -= 1
                    slots.reserved -= 1
                    slots.semaphore.release()
                    if outstanding == 0:
                        self.send(p.encode(p.PRE_SLEEP))
                        sleeping = True
                elif packet.type == p.NOOP:
                    sleeping = False
                elif packet.type == p.ERROR:
                    log.warning("gearmand %s: %r", self.address, packet.args)
        finally:
            # Unanswered GRABs will never be answered on this socket: give their slots back.
            slots.reserved -= outstanding
            for _ in range(outstanding):
                slots.semaphore.release()


class Worker:
    """Serves `functions` ({gearman name: callable}) from `servers` ("host:port").

    `run()` blocks until `stop()` or `max_jobs` jobs have finished; running jobs always finish
    first. Not thread-safe; one Worker per process is the intended use.
    """

    def __init__(self, servers: Sequence[str], functions: dict[str, JobFunction],
                 concurrency: int = DEFAULT_CONCURRENCY, max_jobs: int = 0,
                 client_id: str = "glammp-worker", results: ResultStore | None = None) -> None:
        if not servers or not functions:
            raise ValueError("a worker needs at least one server and one function")
        if concurrency < 1 or max_jobs < 0:
            raise ValueError("concurrency must be >= 1 and max_jobs >= 0")
        self.functions = dict(functions)
        self.client_id = client_id
        self.results = results
        self.slots = _Slots(gevent.lock.BoundedSemaphore(concurrency), max_jobs)
        self.concurrency = concurrency
        self.stopping = False
        self.jobs_done = 0
        self._running = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._conns = [_WorkerConnection(self, h, port)
                       for h, port in (parse_server(s) for s in servers)]
        self._loops: list[gevent.Greenlet] = []
        self._stopped = gevent.event.Event()

    def run(self) -> None:
        """Serves until stopped; returns after the running jobs finished."""
        self._loops = [gevent.spawn(c.run) for c in self._conns]
        self._stopped.wait()
        self._idle.wait()
        gevent.killall(self._loops)
        for conn in self._conns:
            conn.close()
        log.info("worker stopped after %d jobs", self.jobs_done)

    def stop(self) -> None:
        """Stops grabbing jobs; `run()` returns once the running ones are done."""
        self.stopping = True
        # Grab loops blocked in PRE_SLEEP hold no job; a loop between GRAB and its answer may
        # lose an assignment, which gearmand requeues when the connection closes.
        for loop in self._loops:
            loop.kill(block=False)
        self._stopped.set()

    def start_job(self, conn: _WorkerConnection, packet: p.Packet) -> None:
        """Counts the job as running at once (so a stop waits for it) and runs it."""
        self._running += 1
        self._idle.clear()
        gevent.spawn(self._run_job, conn, packet)

    def _run_job(self, conn: _WorkerConnection, packet: p.Packet) -> None:
        """Runs one assigned job and sends its outcome."""
        handle, fname, unique, workload = packet.args
        job = WorkerJob(conn, handle, fname.decode("utf-8", "replace"), unique, workload)
        func = self.functions.get(job.function)
        status = JobStatus.COMPLETE
        data = b""
        text = b""
        try:
            try:
                if func is None:
                    raise LookupError(f"no function {job.function!r} in this worker")
                data = _as_bytes(func(job))
            except JobFailed:
                status = JobStatus.FAILED
            except Exception as e:
                log.exception("job %s (%s) raised", handle.decode("utf-8", "replace"),
                              job.function)
                status = JobStatus.EXCEPTION
                text = f"{type(e).__name__}: {e}".encode()
            # Stored before gearmand hears of the end, so that once status() says the job is
            # gone, fetch_result() already finds it.
            if self.results is not None:
                self._store(job, status, data, text)
            if status == JobStatus.COMPLETE:
                job.send(p.encode(p.WORK_COMPLETE, handle, data))
            elif status == JobStatus.FAILED:
                job.send(p.encode(p.WORK_FAIL, handle))
            else:
                job.send(p.encode(p.WORK_EXCEPTION, handle, text))
        finally:
            self.jobs_done += 1
            self._running -= 1
            self.slots.semaphore.release()
            if self._running == 0:
                self._idle.set()
            if self.slots.max_jobs and self.jobs_done >= self.slots.max_jobs:
                self.stop()

    def _store(self, job: WorkerJob, status: int, data: bytes, text: bytes) -> None:
        assert self.results is not None
        result = JobResult(status=status, data=data, chunks=job.chunks, warnings=job.warnings,
                           numerator=job.numerator, denominator=job.denominator,
                           exception_text=text, handle=job.handle.decode("utf-8", "replace"))
        try:
            self.results.put(result, time.time())
        except Exception:
            log.exception("cannot store the result of %s", result.handle)
