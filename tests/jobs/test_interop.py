"""Interop with other Gearman implementations on the same gearmand: a PHP worker and client
(Debian's php-gearman, libgearman 1.1.20) and a python3-gearman worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from glammp.jobs.ttypes import Job, JobStatus
from services.core.children import Child, wait_for
from services.jobs.service import JobsConfig, JobsHandler, create
from tests.jobs.conftest import unique_fn

HERE = os.path.dirname(os.path.abspath(__file__))
PHP = shutil.which("php")


def php_has_gearman() -> bool:
    if PHP is None:
        return False
    out = subprocess.run([PHP, "-r", "echo class_exists('GearmanWorker') ? 1 : 0;"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() == "1"


needs_php = pytest.mark.skipif(not php_has_gearman(), reason="php-gearman is not installed")


@pytest.fixture
def handler(gearmand: Child, tmp_path: object) -> Iterator[JobsHandler]:
    h = create(JobsConfig(servers=(gearmand.address,),
                          state_db=os.path.join(str(tmp_path), "state.sqlite")))
    yield h
    h.close()


@pytest.fixture
def peer() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(peer: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peer.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def wait_registered(handler: JobsHandler, fn: str) -> None:
    wait_for(lambda: any(fn in w.functions for w in handler.workers()), 20,
             what=f"a worker for {fn}")


@needs_php
def test_php_worker_serves_jobs_submitted_through_the_service(
        handler: JobsHandler, gearmand: Child, peer: list[subprocess.Popen[str]]) -> None:
    fn = unique_fn("php")
    host, port = gearmand.address.split(":")
    proc = start(peer, [PHP or "php", os.path.join(HERE, "php_worker.php"), host, port, fn, "4"])
    wait_registered(handler, fn)
    payload = "héllo\0☃".encode()
    r = handler.submit(Job(name=fn, workload=payload, timeout_ms=10000))
    assert r.status == JobStatus.COMPLETE
    assert r.data == b"php:" + payload[::-1]
    assert r.chunks == [b"php-data:" + payload]
    assert (r.numerator, r.denominator) == (1, 2)
    r = handler.submit(Job(name=fn, workload=b"raise", timeout_ms=10000))
    assert r.status == JobStatus.EXCEPTION and r.exception_text == b"php says no"
    r = handler.submit(Job(name=fn, workload=b"fail", timeout_ms=10000))
    assert r.status == JobStatus.FAILED
    results = handler.submit_batch([Job(name=fn, workload=b"last", timeout_ms=10000)])
    assert results[0].data == b"php:tsal"
    assert proc.wait(timeout=20) == 0


def test_python3_gearman_worker_serves_ascii_jobs(
        handler: JobsHandler, gearmand: Child, peer: list[subprocess.Popen[str]]) -> None:
    fn = unique_fn("py3g")
    start(peer, [sys.executable, os.path.join(HERE, "py3gearman_worker.py"), gearmand.address,
                 fn])
    wait_registered(handler, fn)
    jobs = [Job(name=fn, workload=f"ascii job {i}".encode(), timeout_ms=10000)
            for i in range(10)]
    results = handler.submit_batch(jobs)
    assert [r.data for r in results] == [f"ASCII JOB {i}".encode() for i in range(10)]
    assert all(r.status == JobStatus.COMPLETE for r in results)


@needs_php
def test_php_client_background_job_visible_by_handle(handler: JobsHandler,
                                                     gearmand: Child) -> None:
    fn = unique_fn("phpbg")
    host, port = gearmand.address.split(":")
    out = subprocess.run([PHP or "php", os.path.join(HERE, "php_client.php"), host, port, fn,
                          "from php"], capture_output=True, text=True, timeout=30, check=True)
    handle = out.stdout.strip()
    assert handle.startswith(f"H:{gearmand.address}:")
    state = handler.status(handle)
    assert (state.known, state.running) == (True, False)
    (f,) = [f for f in handler.functions() if f.name == fn]
    assert f.total == 1 and f.queued_normal == 1
    assert handler.cancel(handle)
