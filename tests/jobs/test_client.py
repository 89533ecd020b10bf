"""The multiplexed client against a real gearmand, with in-process glammp workers."""

from __future__ import annotations

import os

import gevent
import pytest

from glammp.common.ttypes import ServiceError
from glammp.jobs.ttypes import JobStatus
from services.core.children import Child, wait_for
from services.jobs.client import GearmanClient, normalize_unique
from tests.jobs import jobfuncs
from tests.jobs.conftest import StartWorker, deadline_in, unique_fn

PRIO_NORMAL, PRIO_HIGH, PRIO_LOW = 0, 1, 2


def test_echo_binary_and_non_ascii(client: GearmanClient, gearmand: Child,
                                   worker_for: StartWorker) -> None:
    fn = unique_fn("echo")
    worker_for([gearmand.address], {fn: jobfuncs.echo})
    for payload in [b"", b"\0", b"a\0b\0\xff\xfe", "héllo-☃".encode(), bytes(range(256)) * 3]:
        for prio in (PRIO_NORMAL, PRIO_HIGH, PRIO_LOW):
            r = client.submit(fn, payload, None, prio, deadline_in(10))
            assert r.status == JobStatus.COMPLETE
            assert r.data == payload
            assert r.handle.startswith(f"H:{gearmand.address}:")


def test_one_mebibyte_byte_exact(client: GearmanClient, gearmand: Child,
                                 worker_for: StartWorker) -> None:
    fn = unique_fn("rev")
    worker_for([gearmand.address], {fn: jobfuncs.reverse})
    payload = os.urandom(1024 * 1024)
    r = client.submit(fn, payload, None, PRIO_NORMAL, deadline_in(20))
    assert r.status == JobStatus.COMPLETE
    assert r.data == payload[::-1]


def test_streamed_data_warnings_status(client: GearmanClient, gearmand: Child,
                                       worker_for: StartWorker) -> None:
    fn = unique_fn("stream")
    worker_for([gearmand.address], {fn: jobfuncs.stream})
    r = client.submit(fn, b"x", None, PRIO_NORMAL, deadline_in(10))
    assert r.status == JobStatus.COMPLETE
    assert r.data == b"done:x"
    assert r.chunks == [b"part1\0", b"part2"]
    assert r.warnings == ["careful ☃".encode()]
    assert (r.numerator, r.denominator) == (2, 3)


def test_fail_and_exception_are_distinguished(client: GearmanClient, gearmand: Child,
                                              worker_for: StartWorker) -> None:
    ffail, fboom = unique_fn("fail"), unique_fn("boom")
    worker_for([gearmand.address], {ffail: jobfuncs.fail, fboom: jobfuncs.boom})
    r = client.submit(ffail, b"", None, PRIO_NORMAL, deadline_in(10))
    assert r.status == JobStatus.FAILED
    assert r.exception_text == b""
    r = client.submit(fboom, b"t5", None, PRIO_NORMAL, deadline_in(10))
    assert r.status == JobStatus.EXCEPTION
    assert r.exception_text == b"ValueError: boom for t5"


def test_deadline_gives_timeout_and_job_keeps_running(client: GearmanClient, gearmand: Child,
                                                      worker_for: StartWorker) -> None:
    fn = unique_fn("slow")
    worker_for([gearmand.address], {fn: jobfuncs.slow})
    r = client.submit(fn, b"1.0", "slow-1", PRIO_NORMAL, deadline_in(0.2))
    assert r.status == JobStatus.TIMEOUT
    assert r.handle
    # The job is still known to gearmand and finishes on its own.
    assert client.status(r.handle, deadline_in(2)).known
    wait_for(lambda: jobfuncs.RUNS[(fn, b"1.0")] == 1, 5, what="slow job ran")
    wait_for(lambda: not client.status(r.handle, deadline_in(2)).known, 5, what="job done")


def test_coalescing_five_callers_one_run(client: GearmanClient, gearmand: Child,
                                         worker_for: StartWorker) -> None:
    fn = unique_fn("slowc")
    other = GearmanClient([gearmand.address])
    try:
        # Callers on two connections: single-flight locally, coalesced by gearmand across.
        calls = [gevent.spawn((client if i % 2 else other).submit, fn, b"0.3", "key-42",
                              PRIO_NORMAL, deadline_in(10)) for i in range(5)]
        wait_for(lambda: client.status_by_unique("key-42", deadline_in(2)).known, 5,
                 what="job queued")
        worker_for([gearmand.address], {fn: jobfuncs.slow})
        gevent.joinall(calls, timeout=15, raise_error=True)
    finally:
        other.close()
    results = [g.value for g in calls]
    assert all(r.status == JobStatus.COMPLETE and r.data == b"0.3" for r in results)
    assert len({r.handle for r in results}) == 1
    assert jobfuncs.RUNS[(fn, b"0.3")] == 1


def test_background_priority_order(client: GearmanClient, gearmand: Child,
                                   worker_for: StartWorker) -> None:
    fn = unique_fn("order")
    order: list[bytes] = []

    def record(job: jobfuncs.WorkerJob) -> bytes:
        order.append(job.workload)
        return b""

    for payload, prio in [(b"low", PRIO_LOW), (b"normal", PRIO_NORMAL), (b"high", PRIO_HIGH),
                          (b"high2", PRIO_HIGH)]:
        handle, unique = client.submit_background(fn, payload, None, prio, deadline_in(5))
        assert handle.startswith("H:") and len(unique) == 32
    worker_for([gearmand.address], {fn: record}, concurrency=1)
    wait_for(lambda: len(order) == 4, 10, what="4 jobs ran")
    assert order == [b"high", b"high2", b"normal", b"low"]


def test_status_by_handle_and_unique(client: GearmanClient, gearmand: Child,
                                     worker_for: StartWorker) -> None:
    fn = unique_fn("st")
    handle, unique = client.submit_background(fn, b"0.5", "st-u1", PRIO_NORMAL, deadline_in(5))
    assert unique == "st-u1"
    s = client.status(handle, deadline_in(2))
    assert (s.known, s.running) == (True, False)
    worker_for([gearmand.address], {fn: jobfuncs.slow})
    wait_for(lambda: client.status(handle, deadline_in(2)).running, 5, what="running")
    s = client.status_by_unique("st-u1", deadline_in(2))
    assert s.known and s.running and s.denominator == 2 and s.waiting_clients == 0
    wait_for(lambda: not client.status(handle, deadline_in(2)).known, 5, what="done")
    assert not client.status_by_unique("st-u1", deadline_in(2)).known
    assert not client.status("H:nowhere:1", deadline_in(2)).known


def test_long_unique_is_hashed_and_coalesces(client: GearmanClient, gearmand: Child) -> None:
    fn = unique_fn("long")
    long_unique = "k" * 200
    h1, u1 = client.submit_background(fn, b"a", long_unique, PRIO_NORMAL, deadline_in(5))
    h2, u2 = client.submit_background(fn, b"b", long_unique, PRIO_NORMAL, deadline_in(5))
    assert u1 == u2 == normalize_unique(long_unique).decode() and len(u1) == 40
    assert h1 == h2
    assert client.status_by_unique(long_unique, deadline_in(2)).known
    assert client.cancel(h1, deadline_in(2))


def test_bad_arguments(client: GearmanClient) -> None:
    for fn, unique in [("", None), ("a\0b", None), ("fn", "u\0")]:
        with pytest.raises(ServiceError) as e:
            client.submit(fn, b"", unique, PRIO_NORMAL, deadline_in(1))
        assert e.value.code == 400


def test_all_servers_down_is_retryable_503() -> None:
    from services.core.children import free_port

    c = GearmanClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    try:
        with pytest.raises(ServiceError) as e:
            c.submit("fn", b"", None, PRIO_NORMAL, deadline_in(2))
        assert e.value.code == 503 and e.value.retryable
    finally:
        c.close()
