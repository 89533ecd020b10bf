"""One soak run from start to verdict.

1. start the deployment (`deployment.Deployment`) and wait until every service answers
   through the gateway;
2. start the driver processes (`driver`) and, in this process, the fault schedule (`faults`);
3. when both are done: restart anything still down, wait for acknowledged background jobs
   to run (bounded), read every acknowledged file back through the gateway (bounded retries);
4. check (`checker`), write `report.txt`, `report.svg`, `final.json` next to the histories and
   `faults.jsonl`, and stop everything.

The fault schedule and the waits run in the entry point's main greenlet, the read-back in
`FINAL_READERS` greenlets (the entry point is monkey-patched like every glammp entry point).
Every wait has a deadline, so a run ends by itself even when the system under test does not
behave.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import gevent

from bench.soak import checker, faults, jobfuncs, plot, report
from bench.soak.deployment import DEADLINES_MS, HOST, Deployment
from bench.soak.driver import SOCKET_SLACK_S, Spec
from bench.soak.workload import ECHO_FUNCTION, file_data
from glammp.common.ttypes import ServiceError
from glammp.jobs.ttypes import Job
from services.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: How long the deployment may take to answer through the gateway after start, in seconds.
READY_TIMEOUT_S = 60.0
#: How long acknowledged background jobs may take to run after the load, in seconds.
JOBS_DRAIN_TIMEOUT_S = 90.0
#: Attempts and the pause between them when reading a file back at the end (seconds).
FINAL_READ_ATTEMPTS = 6
FINAL_READ_PAUSE_S = 1.0
#: Connections reading files back at once.
FINAL_READERS = 4
#: The whole read-back ends within this, in seconds; keys not reached count as unreadable.
READ_BACK_TIMEOUT_S = 900.0
#: Drivers must exit this long after the load's end, in seconds, or they are killed.
DRIVER_GRACE_S = max(DEADLINES_MS.values()) / 1000 + SOCKET_SLACK_S + 15.0
#: Seconds between the drivers' start and the load's start (their imports and connects).
LOAD_DELAY_S = 3.0


@dataclass
class Options:
    """One run: load `duration_s` seconds from `drivers` processes x `greenlets` callers,
    `think_ms` mean pause between a caller's calls, `fault_count` faults, all seeded."""

    out_dir: str = "build/soak"
    duration_s: float = 600.0
    seed: int = 1
    drivers: int = 3
    greenlets: int = 6
    think_ms: float = 10.0
    fault_count: int = 0
    bucket_s: float = 5.0

    @classmethod
    def short(cls, **changes: Any) -> Options:
        """The CI variant: 60 s, two drivers of two callers, one fault of each kind."""
        base: dict[str, Any] = dict(duration_s=60.0, drivers=2, greenlets=2, think_ms=25.0,
                                    fault_count=len(faults.KINDS), bucket_s=1.0)
        return cls(**{**base, **changes})


def _sample_rss(deployment: Deployment, start_at: float, duration_s: float,
                samples: list[dict[str, int | None]]) -> None:
    """Appends every process's RSS at each tenth of the load."""
    for tenth in range(1, 11):
        time.sleep(max(0.0, start_at + duration_s * tenth / 10 - time.time()))
        samples.append(deployment.rss())


def _probe(port: int) -> bool:
    """Whether each service answers a real call through the gateway."""
    try:
        with connect(HOST, port, "Cache", timeout_s=2) as c:
            c.get("soak:probe", None)
        with connect(HOST, port, "Filestore", timeout_s=5) as c:
            c.exists("", "soak/probe")
        with connect(HOST, port, "Jobs", timeout_s=5) as c:
            r = c.submit(Job(name=ECHO_FUNCTION, workload=b"probe", timeout_ms=2000))
            return bool(r.data == b"probe")
    except Exception:  # not ready yet: any failure means "ask again"
        return False


def _start_drivers(opts: Options, port: int, start_at: float) -> list[subprocess.Popen[bytes]]:
    procs = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    for i in range(opts.drivers):
        spec = Spec(host=HOST, port=port, out_dir=opts.out_dir, start_at=start_at,
                    duration_s=opts.duration_s, greenlets=opts.greenlets,
                    max_calls=int(opts.duration_s * 1000), think_ms=opts.think_ms,
                    seed=opts.seed, deadlines_ms=dict(DEADLINES_MS))
        path = os.path.join(opts.out_dir, f"driver-{i}.json")
        with open(path, "w") as f:
            json.dump(asdict(spec), f)
        with open(os.path.join(opts.out_dir, f"driver-{i}.log"), "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.soak.driver", path, str(i)], env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait_drivers(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[str]:
    """Waits for every driver until `deadline` (monotonic); kills the late ones."""
    problems = []
    for i, p in enumerate(procs):
        try:
            code = p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            problems.append(f"driver {i} did not finish in time and was killed")
            continue
        if code != 0:
            problems.append(f"driver {i} exited with {code}")
    return problems


def _wait_jobs(acked: set[str], runs_db: str, timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = jobfuncs.read_runs(runs_db)
        if acked <= runs or time.monotonic() >= deadline:
            return runs
        time.sleep(0.5)


def _read_back(port: int, keys: list[str]) -> dict[str, str]:
    """`_read_slice` over `FINAL_READERS` connections at once."""
    slices = [gevent.spawn(_read_slice, port, keys[i::FINAL_READERS])
              for i in range(FINAL_READERS)]
    gevent.joinall(slices, raise_error=True)
    return {k: v for g in slices for k, v in g.value.items()}


def _read_slice(port: int, keys: list[str]) -> dict[str, str]:
    """Each acknowledged file's state at the end: "ok", "mismatch" or the last error. One
    connection serves the reads; it is replaced after any failure that is not a
    ServiceError (its state is unknown)."""
    found: dict[str, str] = {}
    conn: connect | None = None
    deadline = time.monotonic() + READ_BACK_TIMEOUT_S
    try:
        for key in keys:
            if time.monotonic() > deadline:
                found[key] = f"not read back within {READ_BACK_TIMEOUT_S:.0f}s"
                continue
            for attempt in range(FINAL_READ_ATTEMPTS):
                try:
                    if conn is None:
                        conn = connect(HOST, port, "Filestore", timeout_s=10)
                        client = conn.__enter__()
                    data = client.fetch("", key, None)
                    found[key] = "ok" if data == file_data(key) else "mismatch"
                    break
                except ServiceError as e:
                    found[key] = f"ServiceError {e.code}: {e.message}"
                    # 404 is an answer, not a hiccup: the file is gone.
                    if e.code == 404:
                        break
                except Exception as e:  # a transport hiccup right after the faults: again
                    found[key] = f"{type(e).__name__}: {e}"
                    if conn is not None:
                        conn.__exit__(None, None, None)
                        conn = None
                if attempt + 1 < FINAL_READ_ATTEMPTS:
                    time.sleep(FINAL_READ_PAUSE_S)
    finally:
        if conn is not None:
            conn.__exit__(None, None, None)
    return found


def run(opts: Options) -> checker.Verdict:
    """Runs the whole soak; the verdict (the report files are written as a side effect)."""
    if os.path.isdir(opts.out_dir):
        shutil.rmtree(opts.out_dir)
    os.makedirs(opts.out_dir)
    deployment = Deployment(opts.out_dir)
    t_setup = time.monotonic()
    deployment.start()
    try:
        assert deployment.gateway is not None
        port = deployment.gateway.port
        deployment.wait_ready(lambda: _probe(port), READY_TIMEOUT_S)
        setup_s = time.monotonic() - t_setup
        rss_start = deployment.rss()
        start_at = time.time() + LOAD_DELAY_S
        drivers = _start_drivers(opts, port, start_at)
        plan = faults.plan(opts.seed, opts.duration_s,
                           opts.fault_count or faults.default_count(opts.duration_s))
        rss_during: list[dict[str, int | None]] = []
        sampler = gevent.spawn(_sample_rss, deployment, start_at, opts.duration_s, rss_during)
        with open(os.path.join(opts.out_dir, "faults.jsonl"), "w") as log:
            schedule = faults.Schedule(deployment, plan, log)
            schedule.run(start_at, start_at + opts.duration_s)
        load_end = start_at + opts.duration_s
        problems = _wait_drivers(
            drivers, time.monotonic() + max(0.0, load_end - time.time()) + DRIVER_GRACE_S)
        revived = deployment.revive()
        records, cut = report.load_histories(opts.out_dir)
        acked_jobs = {r["key"] for r in records if r["op"] == "job.bg" and r["out"] == "ok"}
        t_drain = time.monotonic()
        runs = _wait_jobs(acked_jobs, deployment.runs_db, JOBS_DRAIN_TIMEOUT_S)
        drain_s = time.monotonic() - t_drain
        stored = [r["key"] for r in records if r["op"] == "file.store" and r["out"] == "ok"]
        files = _read_back(port, stored)
        sampler.kill()
        final = checker.Final(files=files, runs=runs, rss_start=rss_start,
                              rss_end=deployment.rss(), rss_during=rss_during)
    finally:
        deployment.stop()
    verdict = checker.check(records, final)
    if problems:
        verdict.invariants["progress"].fail("; ".join(problems))
    facts: dict[str, Any] = {
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "seed": opts.seed, "load": f"{opts.duration_s:.0f} s from {opts.drivers} drivers x "
        f"{opts.greenlets} callers (mean think {opts.think_ms} ms)",
        "setup": f"{setup_s:.1f} s", "background jobs drained after the load in":
        f"{drain_s:.1f} s", "history lines cut by a driver's end": cut,
        "restarted after the schedule": ", ".join(revived) or "none",
        "driver problems": "; ".join(problems) or "none",
    }
    text = report.text(verdict, records, schedule.events, final, facts, start_at)
    with open(os.path.join(opts.out_dir, "report.txt"), "w") as f:
        f.write(text)
    data = plot.series(records, start_at, opts.duration_s, opts.bucket_s)
    with open(os.path.join(opts.out_dir, "report.svg"), "w") as f:
        f.write(plot.svg(data, opts.duration_s, schedule.events, start_at,
                         f"glammp soak, seed {opts.seed}: {sum(verdict.calls.values())} calls, "
                         f"{schedule.injected()} faults"))
    with open(os.path.join(opts.out_dir, "final.json"), "w") as f:
        json.dump({"files": files, "runs": len(runs), "acked_jobs": len(acked_jobs),
                   "rss_start_kib": rss_start, "rss_end_kib": final.rss_end,
                   "rss_during_kib": final.rss_during,
                   "held": verdict.held}, f, indent=1)
    print(text, end="")
    return verdict
