"""Gateway: calls through `glammp gateway` -> `glammp cache` vs straight to `glammp cache`.

Rows (issue 8's goals), all measured in this run against the same cache service process:

* `Cache:getStatus` and cache `get` at 32 connections, through the gateway vs direct;
  goal >= 0.8x. The service runs on the server core; the gateway and the load generator
  share the other core (a 2-core machine has no third), so the through-gateway number is
  a lower bound. The goal rows are driven by the Go load generator (bench/loadgen_go, a
  few µs of CPU per call), so that what the shared core spends is mostly the gateway's;
  the same pair driven by the Python one (~20 µs per call) follows without a goal.
* relay capacity: server CPU per call of the service divided by the gateway's CPU per call
  in the same through-gateway run; >= 2 means one gateway core relays at least twice what
  one service process serves (goal: the gateway is never the bottleneck).
* memory: the gateway's RSS while holding 10,000 idle caller connections and serving load;
  goal <= 200 MiB (reported as limit / RSS, so >= 1.0x meets it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from bench.cache import KEY, backends, request
from bench.harness import LOAD_CPU, ROOT, Row, cpu_seconds, load, median
from services.core.children import free_port, port_accepts, wait_for

GOAL_THROUGHPUT = 0.8
GOAL_RELAY = 2.0
RSS_LIMIT_MIB = 200.0
IDLE_CONNECTIONS = 10_000
CONNS = 32


@contextmanager
def gateway_process(upstream_port: int, tmp: str, cpu: int = LOAD_CPU) -> Iterator[tuple[int, int]]:
    """A `glammp gateway` in front of the cache service on `upstream_port`; (port, pid)."""
    port = free_port()
    env = dict(os.environ, GLAMMP__GATEWAY__ACCESS_LOG="false",
               GLAMMP__GATEWAY__MAX_CONNECTIONS_PER_CALLER="20000")
    with open(os.path.join(tmp, "gateway.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--log-level", "warning", "gateway",
             "--port", str(port), "--admin-port", "-1",
             "--upstream", f"Cache=127.0.0.1:{upstream_port}"],
            cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 30,
                 what="glammp gateway listening")
        if proc.poll() is not None:
            raise RuntimeError(f"glammp gateway exited with {proc.returncode}; see {tmp}")
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _through(port: int, gw_pid: int, svc_pid: int, seconds: float, req: bytes,
             go: bool = True) -> dict:
    before = cpu_seconds(gw_pid)
    result = load(port, CONNS, seconds, req, svc_pid, go)
    result["gateway_cpu_us_per_call"] = ((cpu_seconds(gw_pid) - before)
                                         / max(1, result["calls"]) * 1e6)
    return result


def rows(seconds: float, rounds: int) -> list[Row]:
    out = []
    requests = {"Cache:getStatus": request("getStatus"), "Cache get": request("get", KEY, None)}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, \
            backends(tmp) as (_, svc_port, svc_pid), \
            gateway_process(svc_port, tmp) as (gw_port, gw_pid):
        relay = []
        for name, req in requests.items():
            load(gw_port, CONNS, 0.5, req, go=True)  # warm up the pools
            for go in (True, False):
                direct: list[float] = []
                through: list[dict] = []
                for _ in range(rounds):
                    direct.append(load(svc_port, CONNS, seconds, req, svc_pid, go)["rate"])
                    through.append(_through(gw_port, gw_pid, svc_pid, seconds, req, go))
                t = median([r["rate"] for r in through])
                errors = sum(r["errors"] for r in through)
                gw_cpu = median([r["gateway_cpu_us_per_call"] for r in through])
                svc_cpu = median([r["cpu_us_per_call"] for r in through])
                gen_cpu = median([r["loadgen_cpu_us_per_call"] for r in through])
                if go:
                    relay.append((name, svc_cpu, gw_cpu))
                out.append(Row(
                    name=f"{name} via gateway, {CONNS} connections"
                         + ("" if go else " (Python load generator)"),
                    glammp=t, baseline=median(direct), unit="calls/s",
                    baseline_name="direct to the service", goal=GOAL_THROUGHPUT if go else None,
                    notes=f"gateway CPU/call {gw_cpu:.0f} µs, service {svc_cpu:.0f} µs, "
                          f"load generator {gen_cpu:.0f} µs; p99 "
                          f"{median([r['p99_us'] for r in through]):.0f} µs"
                          + (f"; {errors} errors" if errors else ""),
                ))
        for name, svc_cpu, gw_cpu in relay:
            out.append(Row(
                name=f"relay capacity ({name}): service CPU/call ÷ gateway CPU/call",
                glammp=svc_cpu, baseline=gw_cpu, unit="µs", baseline_name="gateway CPU/call",
                goal=GOAL_RELAY, notes="the ratio is how many service processes one gateway "
                                       "core can front"))
        socks = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                socks.append(socket.create_connection(("127.0.0.1", gw_port)))
            wait_for(lambda: _rss_mib(gw_pid) > 0, 5)
            served = load(gw_port, CONNS, seconds, requests["Cache get"], go=True)
            rss = _rss_mib(gw_pid)
        finally:
            for s in socks:
                s.close()
        out.append(Row(
            name=f"gateway RSS with {IDLE_CONNECTIONS:,} idle connections while serving",
            glammp=RSS_LIMIT_MIB, baseline=rss, unit="MiB", baseline_name="measured RSS",
            goal=1.0, notes=f"limit / RSS; {rss:.0f} MiB while serving "
                            f"{served['rate']:,.0f} calls/s"))
    return out


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    from bench.harness import table

    print(table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0, 1)))
