"""Jobs: foreground echo jobs through glammp's protocol layer, python3-gearman, and Thrift.

Same run, same gearmand (in-memory queue) and the same `glammp worker` process (concurrency 64)
for every row; only the submitting side changes:

* protocol layer: one `GearmanClient` shared by N greenlets (one multiplexed connection);
* python3-gearman: one client per greenlet (the only way it survives gevent, see the
  reference); the baseline;
* Thrift end to end: N Thrift connections to a `glammp jobs` process calling `submit`,
  against the protocol layer at the same N.

Rounds alternate between the two sides of a row and the median rate is reported. Usable as a
suite (`rows(seconds, rounds)`): `python -m bench --seconds 2 --rounds 1 jobs_echo`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gevent

from bench.harness import ROOT, Row, median
from services.core.children import Child, free_port, port_accepts, wait_for
from services.jobs.client import GearmanClient
from services.jobs.local import gearmand_argv

#: The issue's goal: the protocol layer at 50 callers vs python3-gearman, one client each.
GOAL_50 = 1.5
FUNCTION = "bench_echo"
PAYLOAD = b"x" * 100

Call = Callable[[bytes], bytes]


@contextmanager
def backends(tmp: str) -> Iterator[str]:
    """A gearmand and a glammp worker for FUNCTION; yields the gearmand address."""
    port = free_port()
    gd = Child("gearmand", gearmand_argv(port), "127.0.0.1", port,
               os.path.join(tmp, "gearmand.log")).start()
    with open(os.path.join(tmp, "worker.log"), "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--log-level", "warning", "worker",
             "--server", gd.address, "--concurrency", "64",
             f"{FUNCTION}=tests.jobs.jobfuncs:echo"],
            cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        probe = GearmanClient([gd.address])
        wait_for(lambda: probe.submit(FUNCTION, b"up", None, 0, time.monotonic() + 5).data
                 == b"up", 30, what="bench worker")
        probe.close()
        yield gd.address
    finally:
        worker.terminate()
        worker.wait(20)
        gd.stop()


@contextmanager
def jobs_service(address: str, tmp: str) -> Iterator[int]:
    """A `glammp jobs` process in front of `address`; yields its Thrift port."""
    port = free_port()
    env = dict(os.environ, GLAMMP__JOBS__SERVERS=f'["{address}"]',
               GLAMMP__JOBS__STATE_DB=f'"{os.path.join(tmp, "state.sqlite")}"',
               GLAMMP__SERVER__ADMIN_PORT="-1")
    with open(os.path.join(tmp, "service.log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "--log-level", "warning",
                                 "jobs", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 30,
                 what="glammp jobs listening")
        if proc.poll() is not None:
            raise RuntimeError(f"glammp jobs exited with {proc.returncode}; see {tmp}")
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def measure(make_call: Callable[[], Call], callers: int, seconds: float) -> tuple[float, int]:
    """(calls/s, wrong answers) of `callers` greenlets, each with `make_call()`, for `seconds`."""
    stop_at = time.monotonic() + seconds
    counts = [0] * callers
    wrong = [0]

    def run(i: int) -> None:
        call = make_call()
        n = 0
        while time.monotonic() < stop_at:
            payload = PAYLOAD + str(n).encode()
            if call(payload) != payload:
                wrong[0] += 1
            n += 1
        counts[i] = n

    started = time.monotonic()
    gevent.joinall([gevent.spawn(run, i) for i in range(callers)], raise_error=True)
    return sum(counts) / (time.monotonic() - started), wrong[0]


def protocol_layer(address: str) -> Callable[[], Call]:
    shared = GearmanClient([address])

    def make() -> Call:
        return lambda payload: shared.submit(FUNCTION, payload, None, 0,
                                             time.monotonic() + 30).data
    return make


def python3_gearman(address: str) -> Callable[[], Call]:
    import python3_gearman as pg

    def make() -> Call:
        client = pg.GearmanClient([address])
        # python3-gearman counts lengths in characters: ASCII text only (the payload is).
        return lambda payload: client.submit_job(FUNCTION, payload.decode()).result.encode()
    return make


def thrift(port: int) -> Callable[[], Call]:
    from glammp.jobs.ttypes import Job
    from services.client import connect

    opened = []  # the context managers: collected ones would close their connection

    def make() -> Call:
        cm = connect("127.0.0.1", port, "Jobs")
        opened.append(cm)
        client = cm.__enter__()
        return lambda payload: client.submit(Job(name=FUNCTION, workload=payload,
                                                 timeout_ms=30000)).data
    return make


def compare(name: str, ours: Callable[[], Call], theirs: Callable[[], Call], callers: int,
            seconds: float, rounds: int, baseline_name: str, goal: float | None) -> Row:
    a: list[float] = []
    b: list[float] = []
    wrong = 0
    measure(ours, callers, 0.5)  # warm up connections, workers and gearmand's tables
    measure(theirs, callers, 0.5)
    for _ in range(rounds):
        rate, w = measure(ours, callers, seconds)
        a.append(rate)
        wrong += w
        rate, w = measure(theirs, callers, seconds)
        b.append(rate)
        wrong += w
    return Row(name=name, glammp=median(a), baseline=median(b), unit="jobs/s",
               baseline_name=baseline_name, goal=goal,
               notes=f"{wrong} wrong results" if wrong else "0 wrong results")


def rows(seconds: float, rounds: int) -> list[Row]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp, backends(tmp) as address:
        for callers in (1, 50):
            out.append(compare(
                f"echo job, {callers} caller{'s' if callers > 1 else ''}: protocol layer",
                protocol_layer(address), python3_gearman(address), callers, seconds, rounds,
                "python3-gearman, one client per greenlet",
                GOAL_50 if callers == 50 else None))
        with jobs_service(address, tmp) as port:
            out.append(compare("echo job, 50 callers: Thrift submit end to end",
                               thrift(port), protocol_layer(address), 50, seconds, rounds,
                               "protocol layer in-process", None))
    return out

