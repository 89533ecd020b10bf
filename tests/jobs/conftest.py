"""Fixtures for the jobs tests: real gearmand processes on free loopback ports, and workers.

`gearmand` is one in-memory gearmand per test module; `make_gearmand()` starts more (with a
SQLite queue when asked) and stops them at the end of the test. `worker_for()` runs an
in-process glammp Worker in a greenlet and stops it at teardown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from services.core.children import Child, free_port
from services.jobs.client import GearmanClient
from services.jobs.local import gearmand_argv
from services.jobs.results import ResultStore
from services.jobs.worker import JobFunction, Worker

MakeGearmand = Callable[..., Child]


def start_gearmand(tmp: str, queue_db: str | None = None, port: int | None = None) -> Child:
    port = port or free_port()
    child = Child(f"gearmand-{port}", gearmand_argv(port, queue_db=queue_db), "127.0.0.1",
                  port, log_path=os.path.join(tmp, f"gearmand-{port}.log"))
    return child.start()


@pytest.fixture(scope="module")
def gearmand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    child = start_gearmand(str(tmp_path_factory.mktemp("gearmand")))
    yield child
    child.stop()


@pytest.fixture
def make_gearmand(tmp_path: object) -> Iterator[MakeGearmand]:
    started: list[Child] = []

    def make(queue_db: str | None = None, port: int | None = None) -> Child:
        child = start_gearmand(str(tmp_path), queue_db, port)
        started.append(child)
        return child

    yield make
    for child in started:
        child.stop()


@pytest.fixture
def client(gearmand: Child) -> Iterator[GearmanClient]:
    c = GearmanClient([gearmand.address])
    yield c
    c.close()


StartWorker = Callable[..., Worker]


@pytest.fixture
def worker_for() -> Iterator[StartWorker]:
    """Starts in-process workers: `worker_for(servers, {name: fn}, concurrency=, ...)`."""
    running: list[tuple[Worker, gevent.Greenlet]] = []

    def start(servers: list[str], functions: dict[str, JobFunction], concurrency: int = 4,
              max_jobs: int = 0, results: ResultStore | None = None) -> Worker:
        w = Worker(servers, functions, concurrency=concurrency, max_jobs=max_jobs,
                   results=results)
        running.append((w, gevent.spawn(w.run)))
        return w

    yield start
    for w, g in running:
        w.stop()
        g.join(timeout=10)
        g.kill()


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def unique_fn(prefix: str) -> str:
    """A function name no other test uses, so queues never mix between tests."""
    return f"{prefix}-{os.urandom(4).hex()}"
