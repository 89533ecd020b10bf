"""Many greenlets through one handler: every caller gets its own result, none is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import gevent
import gevent.pool
import pytest

from glammp.jobs.ttypes import Job, JobStatus
from services.core.children import Child, wait_for
from services.core.dispatch import Mount
from services.core.runner import Process
from services.jobs import service
from services.jobs.service import JobsConfig, JobsHandler, create
from tests.jobs import jobfuncs
from tests.jobs.conftest import StartWorker, unique_fn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GREENLETS = 200
CALLS_EACH = 50
#: Over Thrift each greenlet holds its own connection; fewer calls keep the test short.
THRIFT_CALLS_EACH = 10


@pytest.fixture
def handler(gearmand: Child, tmp_path: object) -> Iterator[JobsHandler]:
    h = create(JobsConfig(servers=(gearmand.address,),
                          state_db=os.path.join(str(tmp_path), "state.sqlite")))
    yield h
    h.close()


def test_200_greenlets_x_50_calls_zero_wrong_results(handler: JobsHandler, gearmand: Child,
                                                     tmp_path: object) -> None:
    fn = unique_fn("load")
    log = open(os.path.join(str(tmp_path), "worker.log"), "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "services.cli", "--log-level", "warning",
                               "worker", "--server", gearmand.address, "--concurrency", "50",
                               f"{fn}=tests.jobs.jobfuncs:reverse"],
                              cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(fn in w.functions for w in handler.workers()), 20,
                 what="worker registered")
        wrong: list[tuple[bytes, bytes]] = []
        done = [0]

        def caller(g: int) -> None:
            for i in range(CALLS_EACH):
                # Every payload is distinct and binary, so a crossed result cannot go unseen.
                payload = f"{g}:{i}:".encode() + os.urandom(16)
                r = handler.submit(Job(name=fn, workload=payload, timeout_ms=60000))
                if r.status != JobStatus.COMPLETE or r.data != payload[::-1]:
                    wrong.append((payload, r.data))
                done[0] += 1

        pool = gevent.pool.Pool(GREENLETS)
        greenlets = [pool.spawn(caller, g) for g in range(GREENLETS)]
        gevent.joinall(greenlets, timeout=120, raise_error=True)
        assert all(g.dead for g in greenlets)
        assert done[0] == GREENLETS * CALLS_EACH
        assert wrong == []
    finally:
        worker.terminate()
        assert worker.wait(timeout=20) == 0  # SIGTERM: finish current jobs, exit 0
        log.close()


def test_200_thrift_connections_through_the_served_handler(
        handler: JobsHandler, gearmand: Child, serve: Callable[..., Process],
        worker_for: StartWorker) -> None:
    from services.client import connect

    fn = unique_fn("tload")
    worker_for([gearmand.address], {fn: jobfuncs.reverse}, concurrency=64)
    mount = Mount(service.SERVICE_NAME, service.MODULE, handler, service.ORIGIN,
                  dict(service.DEADLINES_MS), service.IDEMPOTENT)
    host, port = serve([mount]).server.address
    wrong: list[bytes] = []
    done = [0]

    def caller(g: int) -> None:
        with connect(host, port, "Jobs") as c:
            for i in range(THRIFT_CALLS_EACH):
                payload = f"{g}:{i}:".encode() + os.urandom(8)
                r = c.submit(Job(name=fn, workload=payload, timeout_ms=30000))
                if r.status != JobStatus.COMPLETE or r.data != payload[::-1]:
                    wrong.append(payload)
                done[0] += 1

    greenlets = [gevent.spawn(caller, g) for g in range(GREENLETS)]
    gevent.joinall(greenlets, timeout=120, raise_error=True)
    assert all(g.dead for g in greenlets)
    assert done[0] == GREENLETS * THRIFT_CALLS_EACH
    assert wrong == []
