"""The split deployment the soak runs against, every process on a free loopback port.

    3 memcached ─┐
    2 gearmand ──┤  (SQLite queues)      2 cache, 2 jobs, 2 filestore service processes
    tracker + 2 storage nodes (DevCluster) ─┘  ◄── gateway ◄── drivers
    2 workers (soak_record, soak_echo) on both gearmands

Every process is a `Child` (or a `WorkerProc`, which listens on no port) that the fault
schedule may kill -9 and start again on the same port with the same state files. Logs and
state live under `<out>/data`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench.soak import jobfuncs
from services.cache.local import memcached_argv
from services.core import children
from services.core.children import Child, free_port, wait_for
from services.jobs.local import gearmand_argv
from services.mogilefs.devcluster import DevCluster

HOST = "127.0.0.1"
#: Per-service deadlines the gateway enforces, in milliseconds; drivers use the same.
DEADLINES_MS = {"Cache": 1000, "Filestore": 5000, "Jobs": 5000}
#: A service instance or backend may take this long to listen again after a restart, in s.
RESTART_TIMEOUT_S = 20.0
#: A worker that exits within this many seconds of its start failed to start.
WORKER_SETTLE_S = 0.5


class WorkerProc:
    """A `glammp worker` process: like a `Child`, but it listens on no port, so a start is
    successful once the process is still running after `WORKER_SETTLE_S`."""

    def __init__(self, name: str, argv: list[str], log_path: str, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = RESTART_TIMEOUT_S) -> WorkerProc:
        if self.running():
            return self
        with open(self.log_path, "ab") as out:
            # Dies with the soak (the same parent-death signal every glammp child gets).
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True,
                                         preexec_fn=children.die_with_parent)
        try:
            code = self.proc.wait(WORKER_SETTLE_S)
        except subprocess.TimeoutExpired:
            return self
        raise RuntimeError(f"{self.name} exited with {code}; see {self.log_path}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = children.DEFAULT_STOP_TIMEOUT_S) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc.wait()


Proc = Child | WorkerProc


def _toml(sections: dict[str, dict[str, object]]) -> str:
    """A TOML document of flat sections; JSON spells strings, numbers and lists as TOML."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inline = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inline} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def rss_kib(pid: int | None) -> int | None:
    """Resident memory of a process in KiB (VmRSS); None when it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Deployment:
    """Builds and runs the whole stack under `out_dir/data`; `start()` then `stop()`."""

    out_dir: str
    memcached: list[Child] = field(default_factory=list)
    gearmand: list[Child] = field(default_factory=list)
    services: dict[str, list[Child]] = field(default_factory=dict)
    workers: list[WorkerProc] = field(default_factory=list)
    gateway: Child | None = None
    cluster: DevCluster | None = None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.out_dir, "data")

    @property
    def runs_db(self) -> str:
        return os.path.join(self.data_dir, "runs.sqlite")

    def _log(self, name: str) -> str:
        return os.path.join(self.data_dir, f"{name}.log")

    def _glammp(self, config: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "services.cli", "--config", config, "--log-level",
                "warning", *args]

    def build(self) -> None:
        """Creates every process object (nothing runs yet) and writes the config files."""
        os.makedirs(self.data_dir, exist_ok=True)
        for i in range(3):
            port = free_port(HOST)
            self.memcached.append(Child(f"memcached-{i}", memcached_argv(port, HOST, memory_mb=32),
                                        HOST, port, self._log(f"memcached-{i}")))
        for i in range(2):
            port = free_port(HOST)
            queue = os.path.join(self.data_dir, f"gearmand-{i}.sqlite")
            self.gearmand.append(Child(f"gearmand-{i}", gearmand_argv(port, HOST, queue_db=queue),
                                       HOST, port, self._log(f"gearmand-{i}")))
        self.cluster = DevCluster(os.path.join(self.data_dir, "mogile"))
        state_db = os.path.join(self.data_dir, "jobs-state.sqlite")
        config = os.path.join(self.data_dir, "glammp.toml")
        with open(config, "w") as f:
            f.write(_toml({
                "server": {"host": HOST, "admin_port": -1},
                "cache.pools.default": {"servers": [c.address for c in self.memcached]},
                "jobs": {"servers": [g.address for g in self.gearmand], "state_db": state_db},
                "filestore": {"trackers": self.cluster.trackers},
                "gateway": {"host": HOST, "admin_port": -1, "access_log": False,
                            "deadlines_ms": DEADLINES_MS},
            }))
        for service in ("cache", "jobs", "filestore"):
            self.services[service] = []
            for i in range(2):
                port = free_port(HOST)
                name = f"{service}-{i}"
                self.services[service].append(Child(
                    name, self._glammp(config, service, "--port", str(port)), HOST, port,
                    self._log(name)))
        upstreams = [a for service, mux in (("cache", "Cache"), ("jobs", "Jobs"),
                                            ("filestore", "Filestore"))
                     for c in self.services[service] for a in ("--upstream", f"{mux}={c.address}")]
        port = free_port(HOST)
        self.gateway = Child("gateway", self._glammp(config, "gateway", "--port", str(port),
                                                     *upstreams), HOST, port, self._log("gateway"))
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, jobfuncs.RUNS_DB_ENV: self.runs_db, "PYTHONPATH": path}
        servers = [a for g in self.gearmand for a in ("--server", g.address)]
        for i in range(2):
            name = f"worker-{i}"
            argv = [sys.executable, "-m", "services.cli", "--log-level", "warning", "worker",
                    *servers, "--concurrency", "8", "--results-db", state_db,
                    "--client-id", name,
                    f"soak_record={jobfuncs.__name__}:record",
                    f"soak_echo={jobfuncs.__name__}:echo"]
            self.workers.append(WorkerProc(name, argv, self._log(name), env))

    def start(self) -> Deployment:
        """Starts everything, backends first; stops what started when a step fails."""
        self.build()
        jobfuncs.open_runs(self.runs_db).close()
        try:
            for child in [*self.memcached, *self.gearmand]:
                child.start()
            assert self.cluster is not None
            self.cluster.start()
            for child in self.service_instances():
                child.start(RESTART_TIMEOUT_S)
            for worker in self.workers:
                worker.start()
            assert self.gateway is not None
            self.gateway.start(RESTART_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def service_instances(self) -> list[Child]:
        return [c for group in self.services.values() for c in group]

    def storage_nodes(self) -> list[Child]:
        return list(self.cluster.storage) if self.cluster else []

    def tracker(self) -> Child:
        assert self.cluster is not None
        return self.cluster.tracker

    def glammp_processes(self) -> dict[str, Proc]:
        """Every glammp process (not memcached or gearmand), by name: what RSS is kept of."""
        procs: dict[str, Proc] = {c.name: c for c in self.service_instances()}
        procs.update({w.name: w for w in self.workers})
        procs.update({c.name: c for c in self.storage_nodes()})
        procs["mogilefsd"] = self.tracker()
        if self.gateway is not None:
            procs["gateway"] = self.gateway
        return procs

    def all_processes(self) -> list[Proc]:
        return [*self.memcached, *self.gearmand, *self.storage_nodes(),
                *([self.tracker()] if self.cluster else []), *self.service_instances(),
                *self.workers, *([self.gateway] if self.gateway else [])]

    def rss(self) -> dict[str, int | None]:
        """KiB of resident memory of every glammp process now."""
        return {name: rss_kib(p.pid) for name, p in self.glammp_processes().items()}

    def revive(self) -> list[str]:
        """Starts any process that is not running (after the fault schedule); their names."""
        revived = []
        for p in self.all_processes():
            if not p.running():
                p.start(RESTART_TIMEOUT_S)
                revived.append(p.name)
        return revived

    def stop(self) -> None:
        """Stops the callers' side first (gateway, services, workers), then the backends."""
        ordered: list[Proc] = [*([self.gateway] if self.gateway else []),
                               *self.service_instances(), *self.workers]
        for p in ordered:
            p.stop()
        if self.cluster is not None:
            self.cluster.stop()
        for p in [*self.gearmand, *self.memcached]:
            p.stop()

    def wait_ready(self, probe: object, timeout_s: float) -> float:
        """Waits until `probe()` is true (e.g. a call through the gateway works); seconds."""
        t0 = time.monotonic()
        wait_for(probe, timeout_s, interval_s=0.1, what="the deployment answering")
        return time.monotonic() - t0
