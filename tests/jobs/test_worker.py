"""The worker runner: concurrency, max_jobs, graceful stop, SIGTERM, function loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import gevent
import gevent.event
import pytest

from glammp.jobs.ttypes import JobStatus
from services.core.children import Child, wait_for
from services.jobs.client import GearmanClient
from services.jobs.worker import Worker, WorkerJob, load_function
from tests.jobs import jobfuncs
from tests.jobs.conftest import StartWorker, deadline_in, unique_fn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_load_function() -> None:
    assert load_function("tests.jobs.jobfuncs:echo") == ("echo", jobfuncs.echo)
    assert load_function("my-fn=tests.jobs.jobfuncs:echo") == ("my-fn", jobfuncs.echo)
    for bad in ["tests.jobs.jobfuncs", "tests.jobs.jobfuncs:nothing", "no.such.module:f",
                "tests.jobs.jobfuncs:RUNS"]:
        with pytest.raises(ValueError):
            load_function(bad)


def test_concurrency_runs_jobs_at_once(client: GearmanClient, gearmand: Child,
                                       worker_for: StartWorker) -> None:
    fn = unique_fn("conc")
    running = [0, 0]  # now, most at once
    release = gevent.event.Event()

    def hold(job: WorkerJob) -> bytes:
        running[0] += 1
        running[1] = max(running[1], running[0])
        release.wait(10)
        running[0] -= 1
        return job.workload

    worker_for([gearmand.address], {fn: hold}, concurrency=4)
    calls = [gevent.spawn(client.submit, fn, f"{i}".encode(), None, 0, deadline_in(20))
             for i in range(6)]
    wait_for(lambda: running[0] == 4, 10, what="4 jobs running at once")
    gevent.sleep(0.1)
    assert running[1] == 4  # never more than the concurrency
    release.set()
    gevent.joinall(calls, timeout=20, raise_error=True)
    assert sorted(g.value.data for g in calls) == [f"{i}".encode() for i in range(6)]


def test_max_jobs_then_run_returns(client: GearmanClient, gearmand: Child) -> None:
    fn = unique_fn("max")
    for i in range(5):
        client.submit_background(fn, f"{i}".encode(), None, 0, deadline_in(5))
    ran: list[bytes] = []
    w = Worker([gearmand.address], {fn: lambda job: ran.append(job.workload) or b""},
               concurrency=2, max_jobs=3)
    g = gevent.spawn(w.run)
    g.join(timeout=10)
    assert g.dead and g.successful()
    assert len(ran) == 3 and w.jobs_done == 3
    (line,) = [f for f in _status(client, gearmand) if f[0] == fn]
    assert line[1:] == (2, 0)  # the other two are still queued


def _status(client: GearmanClient, g: Child) -> list[tuple[str, int, int]]:
    """(function, total, running) from gearmand's `status`."""
    from services.jobs import protocol as p

    return [(f.name, f.total, f.running) for f in
            p.parse_status(client.admin(g.address, "status", deadline_in(2)))]


def test_stop_finishes_the_running_job(client: GearmanClient, gearmand: Child) -> None:
    fn = unique_fn("stop")
    w = Worker([gearmand.address], {fn: jobfuncs.slow}, concurrency=2)
    g = gevent.spawn(w.run)
    call = gevent.spawn(client.submit, fn, b"0.3", None, 0, deadline_in(10))
    wait_for(lambda: jobfuncs.RUNS[(fn, b"0.3")] == 1, 10, what="job started")
    w.stop()
    r = call.get(timeout=10)
    assert r.status == JobStatus.COMPLETE and r.data == b"0.3"
    g.join(timeout=10)
    assert g.dead and w.jobs_done == 1


def test_sigterm_on_glammp_worker_finishes_current_job(client: GearmanClient, gearmand: Child,
                                                       tmp_path: object) -> None:
    fn = unique_fn("term")
    with open(os.path.join(str(tmp_path), "w.log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--server",
                                 gearmand.address, f"{fn}=tests.jobs.jobfuncs:slow"],
                                cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        call = gevent.spawn(client.submit, fn, b"0.5", None, 0, deadline_in(30))
        wait_for(lambda: (fn, 1, 1) in _status(client, gearmand), 20, what="job running")
        proc.send_signal(signal.SIGTERM)
        r = call.get(timeout=20)
        assert r.status == JobStatus.COMPLETE and r.data == b"0.5"
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_cli_rejects_a_bad_function() -> None:
    import argparse

    from services.jobs.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["worker", "--server", "127.0.0.1:1", "no.such.module:f"])
    assert args.func(args) == 2
    args = parser.parse_args(["worker", "--server", "nohost", "tests.jobs.jobfuncs:echo"])
    assert args.func(args) == 2
    args = parser.parse_args(["worker", "--server", "127.0.0.1:1", "--results-db",
                              "/nonexistent-dir/x.sqlite", "tests.jobs.jobfuncs:echo"])
    assert args.func(args) == 2
