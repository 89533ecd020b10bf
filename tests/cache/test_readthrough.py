"""get_or_compute against real memcached, a real gearmand and a real glammp worker: one load
per stampede across two instances, clear failures and retries, stale answers, and XFetch."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import gevent
import pytest

from glammp.cache.ttypes import Loader, ReadOptions, Target
from services.cache.readthrough import should_refresh
from services.cache.service import CacheHandler
from services.core.children import Child, wait_for
from services.core.errors import ServiceError
from services.jobs.worker import JobFailed, Worker, WorkerJob
from tests.cache.conftest import MakeHandler
from tests.jobs.conftest import start_gearmand


class CountingLoader:
    """A Gearman function that counts its runs, takes `pause_s` and can be told to fail."""

    def __init__(self, pause_s: float) -> None:
        self.name = f"load-{os.urandom(4).hex()}"
        self.pause_s = pause_s
        self.runs = 0
        self.fail = False

    def __call__(self, job: WorkerJob) -> bytes:
        self.runs += 1
        gevent.sleep(self.pause_s)
        if self.fail:
            raise JobFailed("backend down")
        return b"value-%d:" % self.runs + job.workload


@pytest.fixture(scope="module")
def gearmand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    child = start_gearmand(str(tmp_path_factory.mktemp("gearmand")))
    yield child
    child.stop()


@pytest.fixture
def start_loader(gearmand: Child) -> Iterator[object]:
    running: list[tuple[Worker, gevent.Greenlet]] = []

    def start(pause_s: float) -> CountingLoader:
        loader = CountingLoader(pause_s)
        worker = Worker([gearmand.address], {loader.name: loader}, concurrency=4)
        running.append((worker, gevent.spawn(worker.run)))
        return loader

    yield start
    for worker, g in running:
        worker.stop()
        g.join(timeout=10)
        g.kill()


def two(make_handler: MakeHandler, servers: list[str], gearmand: Child,
        **cache: object) -> tuple[CacheHandler, CacheHandler]:
    options = {"gearman_servers": [gearmand.address], **cache}
    return (make_handler(servers, cache=options), make_handler(servers, cache=options))


def run_all(jobs: list[gevent.Greenlet]) -> None:
    with gevent.Timeout(60):
        gevent.joinall(jobs)


def test_stampede_loads_once(servers: list[str], make_handler: MakeHandler, gearmand: Child,
                             start_loader: object) -> None:
    a, b = two(make_handler, servers, gearmand)
    loader = start_loader(0.3)  # type: ignore[operator]
    spec = Loader(name=loader.name, ttl=60)
    jobs = [gevent.spawn((a, b)[i % 2].get_or_compute, "hot", spec, None) for i in range(200)]
    run_all(jobs)
    assert [j.exception for j in jobs if not j.successful()] == []
    assert {(j.value.found, j.value.value) for j in jobs} == {(True, b"value-1:hot")}
    assert loader.runs == 1
    # Afterwards it is a plain hit, also through get().
    assert a.get("hot", None).value == b"value-1:hot"
    assert b.get_or_compute("hot", spec, None).value == b"value-1:hot"
    assert loader.runs == 1
    counters = [h.counters() for h in (a, b)]
    assert sum(c["cache.readthrough.loads"] for c in counters) == 1
    assert sum(c["cache.readthrough.waits"] for c in counters) >= 1  # the other instance


def test_failing_loader_is_a_clear_error_then_retried(
    servers: list[str], make_handler: MakeHandler, gearmand: Child, start_loader: object
) -> None:
    a, b = two(make_handler, servers, gearmand)
    loader = start_loader(0.3)  # type: ignore[operator]
    loader.fail = True
    spec = Loader(name=loader.name, workload=b"w", ttl=60)
    def call(h: CacheHandler) -> ServiceError | None:
        try:
            h.get_or_compute("flaky", spec, None)
        except ServiceError as e:
            return e
        return None

    jobs = [gevent.spawn(call, (a, b)[i % 2]) for i in range(200)]
    run_all(jobs)
    errors = [j.value for j in jobs]
    assert all(isinstance(e, ServiceError) for e in errors)
    assert {e.code for e in errors} == {502}  # type: ignore[union-attr]
    assert all("FAILED" in e.message and loader.name in e.message  # type: ignore[union-attr]
               for e in errors)
    assert loader.runs == 1
    loader.fail = False
    assert a.get_or_compute("flaky", spec, None).value == b"value-2:w"
    assert loader.runs == 2
    assert b.get("flaky", None).value == b"value-2:w"


def test_stale_value_while_another_instance_recomputes(
    servers: list[str], make_handler: MakeHandler, gearmand: Child, start_loader: object
) -> None:
    a, b = two(make_handler, servers, gearmand)
    loader = start_loader(0.5)  # type: ignore[operator]
    spec = Loader(name=loader.name, ttl=60)
    assert a.get_or_compute("sw", spec, None).value == b"value-1:sw"
    # Invalidate as stale-while-revalidate: the next reader recomputes, others get the old.
    assert a.invalidate("sw", None) is True
    assert a.invalidate("never-written", None) is False
    first = gevent.spawn(a.get_or_compute, "sw", spec, None)
    wait_for(lambda: loader.runs == 2, 10, 0.01, "the recompute to start")
    assert b.get_or_compute("sw", spec, None).value == b"value-1:sw"
    assert b.counters()["cache.readthrough.stale_served"] == 1
    run_all([first])
    assert first.value.value == b"value-2:sw"
    assert b.get_or_compute("sw", spec, None).value == b"value-2:sw"


def test_namespaced_and_errors(servers: list[str], make_handler: MakeHandler, gearmand: Child,
                               start_loader: object) -> None:
    a, _ = two(make_handler, servers, gearmand)
    loader = start_loader(0)  # type: ignore[operator]
    spec = Loader(name=loader.name, ttl=60)
    opts = ReadOptions(target=Target(ns="n1"))
    assert a.get_or_compute("k", spec, opts).value == b"value-1:k"
    assert a.get_or_compute("k", spec, opts).value == b"value-1:k"
    a.invalidate_namespace("n1", None)
    assert a.get_or_compute("k", spec, opts).value == b"value-2:k"
    with pytest.raises(ServiceError) as info:
        a.get_or_compute("k", Loader(name=""), None)
    assert info.value.code == 400
    plain = make_handler(servers)
    with pytest.raises(ServiceError) as info:
        plain.get_or_compute("k", spec, None)
    assert info.value.code == 501


def test_should_refresh_is_xfetch() -> None:
    # Far from expiry a draw near 0 would be needed; at expiry every draw refreshes.
    assert not should_refresh(0, 100, 10_000, 1.0, 0.5)
    assert should_refresh(0, 100, 10_000, 1.0, 1e-44)
    assert should_refresh(10_000, 100, 10_000, 1.0, 1.0)
    assert not should_refresh(10_000, 100, 0, 1.0, 1e-300)  # no expiry: never
    # beta > 1 refreshes earlier for the same draw.
    assert not should_refresh(9_900, 100, 10_000, 1.0, 0.5)
    assert should_refresh(9_900, 100, 10_000, 2.0, 0.5)


def test_xfetch_refreshes_hot_keys_before_expiry_never_cold_ones(
    servers: list[str], make_handler: MakeHandler, gearmand: Child, start_loader: object
) -> None:
    a, _ = two(make_handler, servers, gearmand, xfetch_beta=4.0)
    a.readthrough.rng = random.Random(7)
    loader = start_loader(0.5)  # type: ignore[operator]
    hot = Loader(name=loader.name, ttl=5)
    cold = Loader(name=loader.name, ttl=600)
    written = time.time()
    assert a.get_or_compute("hot", hot, None).value == b"value-1:hot"
    assert a.get_or_compute("cold", cold, None).value == b"value-2:cold"
    refreshed_at = None
    values = set()
    for _ in range(100):  # a read every 50 ms for up to 5 s, the hot key's TTL
        values.add(a.get_or_compute("hot", hot, None).value)
        values.add(a.get_or_compute("cold", cold, None).value)
        if loader.runs == 3 and refreshed_at is None:
            wait_for(lambda: a.get("hot", None).value == b"value-3:hot", 10, 0.01, "refresh")
            refreshed_at = time.time()
            break
        gevent.sleep(0.05)
    assert refreshed_at is not None and refreshed_at < written + 5
    assert values <= {b"value-1:hot", b"value-2:cold", b"value-3:hot"}
    counters = a.counters()
    assert counters["cache.readthrough.early_refreshes"] == 1
    assert counters["cache.readthrough.waits"] == 0  # no read ever waited for a load
    assert a.get_or_compute("cold", cold, None).value == b"value-2:cold"


def test_winner_past_its_deadline_still_stores_the_value(
    servers: list[str], make_handler: MakeHandler, gearmand: Child, start_loader: object
) -> None:
    a, b = two(make_handler, servers, gearmand, default_deadline_ms=300)
    loader = start_loader(1.0)  # type: ignore[operator]
    spec = Loader(name=loader.name, ttl=60)
    with pytest.raises(ServiceError) as info:
        a.get_or_compute("slow", spec, None)
    assert (info.value.code, info.value.retryable) == (504, True)
    with pytest.raises(ServiceError) as info:  # the other instance waits on the lease
        b.get_or_compute("slow", spec, None)
    assert info.value.code == 504
    # Until then a plain get reads memcached's lease placeholder: an empty item.
    assert b.get("slow", None).value == b""
    wait_for(lambda: b.get("slow", None).value, 10, 0.05, "the background load to store")
    assert b.get_or_compute("slow", spec, None).value == b"value-1:slow"
    assert loader.runs == 1


def test_large_computed_value(servers: list[str], make_handler: MakeHandler, gearmand: Child,
                              start_loader: object) -> None:
    a, b = two(make_handler, servers, gearmand)
    loader = start_loader(0)  # type: ignore[operator]
    workload = random.Random(3).randbytes(1536 * 1024)
    spec = Loader(name=loader.name, workload=workload, ttl=60)
    assert a.get_or_compute("huge", spec, None).value == b"value-1:" + workload
    # Stored split behind a manifest, envelope inside: both instances read it whole.
    assert b.get_or_compute("huge", spec, None).value == b"value-1:" + workload
    assert b.get("huge", None).value == b"value-1:" + workload
    assert loader.runs == 1
    assert b.counters()["cache.default.large.read"] == 2
