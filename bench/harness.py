"""Running servers and load generators for benchmarks, and reporting ratios.

On a machine with two or more cores the server under test is pinned to core 0 and the load
generator to core 1, so the number measured is what one server core delivers. CPU per call is
the server process's user+system time (from /proc) divided by the calls it answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from services.core.children import free_port, port_accepts, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_CPU = 0
LOAD_CPU = 1 if (os.cpu_count() or 1) > 1 else 0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the results table: glammp against a baseline measured in the same run."""

    name: str
    glammp: float
    baseline: float
    unit: str
    baseline_name: str
    goal: float | None = None
    notes: str = ""

    @property
    def ratio(self) -> float:
        return self.glammp / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> str:
        if self.goal is None:
            return ""
        return "yes" if self.ratio >= self.goal else "NO"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


@contextmanager
def served(argv: Sequence[str], port: int, log: str | None = None,
           cpu: int = SERVER_CPU) -> Iterator[int]:
    """Runs `argv` pinned to `cpu` until its `port` accepts; yields its pid and stops it
    (SIGTERM, then SIGKILL) at the end. Output goes to `log` (or is discarded)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(argv), cwd=ROOT, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, preexec_fn=lambda: _pin(cpu))
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 30,
                 what=f"{argv[0]} listening on {port}")
        if proc.poll() is not None:
            raise RuntimeError(f"{list(argv)} exited with {proc.returncode}"
                               + (f"; see {log}" if log else ""))
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def python_server(module: str, *args: str, cpu: int = SERVER_CPU) -> Iterator[tuple[int, int]]:
    """Runs `python -m module <args> PORT` pinned to `cpu`; yields (port, pid)."""
    port = free_port()
    with served([sys.executable, "-m", module, *args, str(port)], port, cpu=cpu) as pid:
        yield port, pid


def go_loadgen() -> str:
    """bench/loadgen_go built (once) into build/loadgen with Debian's Go; its path."""
    source = os.path.join(ROOT, "bench", "loadgen_go", "main.go")
    binary = os.path.join(ROOT, "build", "loadgen")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="",
                   GOCACHE=os.path.join(ROOT, "build", "go-cache"))
        subprocess.run(["go", "build", "-o", binary, source], cwd=ROOT, env=env, check=True)
    return binary


def load(port: int, conns: int, seconds: float, request: bytes,
         server_pid: int | None = None, go: bool = False) -> dict:
    """Runs bench.loadgen (or, with `go`, bench/loadgen_go, which costs a few µs per call
    instead of ~20) against 127.0.0.1:port on the load core; adds `cpu_us_per_call`."""
    before = cpu_seconds(server_pid) if server_pid else 0.0
    generator = [go_loadgen()] if go else [sys.executable, "-m", "bench.loadgen"]
    out = subprocess.run(
        [*generator, "127.0.0.1", str(port), str(conns), str(seconds), request.hex()],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60,
        preexec_fn=lambda: _pin(LOAD_CPU),
    )
    result = json.loads(out.stdout)
    result["rate"] = result["calls"] / result["seconds"]
    if server_pid:
        used = cpu_seconds(server_pid) - before
        result["cpu_us_per_call"] = used / max(1, result["calls"]) * 1e6
    return result


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| benchmark | glammp | baseline | ratio | goal | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = f"≥ {r.goal:g}x" if r.goal is not None else ""
        ratio = f"{r.ratio:.2f}x" if r.baseline else "—"
        lines.append(
            f"| {r.name} | {r.glammp:,.0f} {r.unit} | {r.baseline:,.0f} {r.unit} "
            f"({r.baseline_name}) | {ratio} | {goal} | {r.met} | {r.notes} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}, "
            f"{time.strftime('%Y-%m-%d')}")
