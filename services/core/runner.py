"""Running a glammp server process: one process, or N processes on one port.

`run(spec)` serves until SIGTERM or SIGINT, then drains and returns 0.

* `processes = 1`: this process binds the port, serves, and runs the admin HTTP port.
* `processes = N > 1`: this process (the parent) reserves the port and forks N workers, each
  binding it with SO_REUSEPORT so the kernel spreads connections over them. Each worker writes
  its metrics snapshot to a shared run directory every `SNAPSHOT_INTERVAL_S`; the parent's
  admin port and every worker's `getCounters` report the sum. The parent restarts a worker
  that dies, and forwards SIGTERM to all of them.

Handlers are built by `spec.mounts()` in the process that serves them (after the fork), so no
backend connection is shared across processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

import glammp.base.Base
from glammp.base.ttypes import Status
from services.core import metrics as metrics_mod
from services.core.admin import AdminApp, serve_admin
from services.core.base import BaseHandler, StatusBoard
from services.core.children import free_port, port_accepts, wait_for
from services.core.dispatch import BASE_SERVICE, Dispatcher, Mount
from services.core.server import ServerConfig, ThriftServer, listening_socket

log = logging.getLogger(__name__)

#: How often a worker process publishes its metrics, in seconds.
SNAPSHOT_INTERVAL_S = 1.0
#: A worker that dies sooner than this after starting is not restarted at once, in seconds.
RESTART_BACKOFF_S = 1.0


@dataclass
class ServeSpec:
    """What a glammp process serves."""

    config: ServerConfig
    mounts: Callable[[], list[Mount]]
    name: str = "glammp"
    #: Called with (thrift address, admin address or None) once the port accepts.
    on_ready: Callable[[tuple[str, int], tuple[str, int] | None], None] | None = None


class Process:
    """One serving process: dispatcher, Thrift server, status board."""

    def __init__(self, spec: ServeSpec, listener: Any = None, run_dir: str | None = None):
        self.spec = spec
        self.run_dir = run_dir
        self.metrics = metrics_mod.Metrics()
        self.board = StatusBoard()
        mounts = spec.mounts()
        base = BaseHandler(self.board, self.counters, spec.name)
        self.dispatcher = Dispatcher(
            [Mount(BASE_SERVICE, glammp.base.Base, base, "base"), *mounts],
            self.metrics,
            default_deadline_ms=spec.config.default_deadline_ms,
            max_inflight=spec.config.max_inflight,
            deadline_overrides_ms=spec.config.deadlines_ms,
        )
        self.counter_sources = [m.handler for m in mounts if hasattr(m.handler, "counters")]
        for mount in mounts:
            self.board.watch(mount.name, mount.handler)
        self.server = ThriftServer(spec.config, self.dispatcher, listener, self._draining)

    def _draining(self) -> None:
        self.board.state = Status.STOPPING

    def own_snapshot(self) -> dict[str, Any]:
        handler: dict[str, int] = {}
        for source in self.counter_sources:
            try:
                handler.update(source.counters())
            except Exception:
                log.exception("counters() of a handler failed")
        return self.metrics.snapshot(handler)

    def snapshot(self) -> dict[str, Any]:
        """The numbers of every process serving the port, summed."""
        if self.run_dir is None:
            return self.own_snapshot()
        metrics_mod.write_snapshot(self.run_dir, self.own_snapshot())
        return metrics_mod.merge(metrics_mod.read_snapshots(self.run_dir))

    def counters(self) -> dict[str, int]:
        return metrics_mod.fb303_counters(self.snapshot())

    def start(self) -> None:
        self.server.start()
        self.board.state = Status.ALIVE

    def stop(self) -> bool:
        clean = self.server.drain()
        self.board.state = Status.STOPPED
        self.dispatcher.close_handlers()
        if self.run_dir is not None:
            metrics_mod.write_snapshot(self.run_dir, self.own_snapshot())
        return clean


def _wait_for_signal() -> None:
    stop = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop.wait()
    finally:
        for h in handlers:
            h.cancel()


def run(spec: ServeSpec) -> int:
    """Serves `spec` until SIGTERM/SIGINT; returns the exit code."""
    if spec.config.processes > 1:
        return _run_many(spec)
    proc = Process(spec)
    proc.start()
    admin = None
    if spec.config.admin_port >= 0:
        admin = serve_admin(
            spec.config.admin_host,
            spec.config.admin_port,
            AdminApp(proc.snapshot, proc.board.current, proc.board.started_at),
        )
    if spec.on_ready is not None:
        spec.on_ready(proc.server.address, admin.address[:2] if admin else None)
    _wait_for_signal()
    log.info("draining")
    proc.stop()
    if admin is not None:
        admin.stop()
    log.info("stopped")
    return 0


def _run_many(spec: ServeSpec) -> int:
    cfg = spec.config
    # Reserve the port (bound, never listening, so it takes no connections) for the workers.
    host = cfg.host
    port = cfg.port or free_port(host)
    reserve = _bound_only(host, port)
    run_dir = tempfile.mkdtemp(prefix="glammp-metrics-")
    children: dict[int, float] = {}
    # What a worker forked later must not keep from the parent.
    inherited: list[Callable[[], None]] = [reserve.close]

    def fork_worker() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for close in inherited:
                    close()
                code = _worker(spec, host, port, run_dir)
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    for _ in range(cfg.processes):
        fork_worker()
    board = StatusBoard()
    board.state = Status.ALIVE

    def snapshot() -> dict[str, Any]:
        return metrics_mod.merge(metrics_mod.read_snapshots(run_dir))

    admin = None
    if cfg.admin_port >= 0:
        admin = serve_admin(cfg.admin_host, cfg.admin_port,
                            AdminApp(snapshot, board.current, board.started_at))
        inherited.append(admin.close)
    stopping = gevent.event.Event()

    def reap() -> None:
        while not stopping.is_set():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid and pid in children:
                started = children.pop(pid)
                log.warning("worker %d exited (status %d); restarting", pid, status)
                if time.monotonic() - started < RESTART_BACKOFF_S:
                    gevent.sleep(RESTART_BACKOFF_S)
                if not stopping.is_set():
                    fork_worker()
            gevent.sleep(0.1)

    reaper = gevent.spawn(reap)
    inherited.append(lambda: reaper.kill(block=False))
    wait_for(lambda: port_accepts(host, port), 10, what=f"a worker listening on {port}")
    if spec.on_ready is not None:
        spec.on_ready((host, port), admin.address[:2] if admin else None)
    _wait_for_signal()
    stopping.set()
    reaper.kill()
    board.state = Status.STOPPING
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            children.pop(pid, None)
    deadline = time.monotonic() + cfg.drain_grace_ms / 1000.0 + 5.0
    code = 0
    while children and time.monotonic() < deadline:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.pop(pid)
                code = code or (os.waitstatus_to_exitcode(status) != 0)
        gevent.sleep(0.05)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        code = 1
    reserve.close()
    if admin is not None:
        admin.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
    return int(code)


def _bound_only(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def _worker(spec: ServeSpec, host: str, port: int, run_dir: str) -> int:
    listener = listening_socket(host, port, spec.config.backlog, reuse_port=True)
    proc = Process(spec, listener, run_dir)
    proc.start()

    def publish() -> None:
        while True:
            metrics_mod.write_snapshot(run_dir, proc.own_snapshot())
            gevent.sleep(SNAPSHOT_INTERVAL_S)

    publisher = gevent.spawn(publish)
    _wait_for_signal()
    publisher.kill()
    return 0 if proc.stop() else 1
