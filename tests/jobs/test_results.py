"""The result store and the schedule table, on SQLite files, without gearmand."""

from __future__ import annotations

import os

from glammp.jobs.ttypes import JobResult, JobStatus
from services.jobs.results import ResultStore
from services.jobs.schedule import CLAIM_LEASE_S, Schedule


def result(handle: str, data: bytes) -> JobResult:
    return JobResult(status=JobStatus.COMPLETE, data=data, chunks=[b"\0c"], warnings=[],
                     numerator=1, denominator=2, exception_text=b"", handle=handle)


def test_results_round_trip_replace_and_expire(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "r.sqlite")
    store = ResultStore(path, retention_s=100)
    store.put(result("H:a:1", b"\0\xffone"), finished_at=1000.0)
    assert store.get("H:a:1", now=1050.0) == result("H:a:1", b"\0\xffone")
    # A second process (a worker) sees the same file.
    other = ResultStore(path, retention_s=100)
    other.put(result("H:a:1", b"two"), finished_at=1060.0)
    assert store.get("H:a:1", now=1070.0) == result("H:a:1", b"two")
    assert store.get("H:a:1", now=1161.0) is None  # past the retention
    assert store.get("H:a:2", now=1070.0) is None
    assert store.purge(now=1161.0) == 1
    other.close()
    store.close()


def test_schedule_claims_are_exclusive_between_processes(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.sqlite")
    a, b = Schedule(path), Schedule(path)
    e1 = a.add("fn", "u1", 0, b"\0w", run_at_ms=1000)
    e2 = a.add("fn", "u2", 2, b"later", run_at_ms=40_000)
    assert a.next_due_ms() == 1000
    assert a.claim_due(999) == []
    (got,) = a.claim_due(1000)
    assert got == e1 and got.workload == b"\0w"
    assert b.claim_due(2000) == []  # leased by a
    lease_end = 1000 + int(CLAIM_LEASE_S * 1000)
    assert [e.id for e in b.claim_due(lease_end)] == [e1.id]  # a died holding it
    b.release(e1.id, retry_at_ms=lease_end + 10)
    assert b.claim_due(lease_end + 5) == []  # released for later
    a.delete(e1.id)
    assert b.claim_due(40_000) == [e2]
    assert b.cancel(e2.id) is True and b.cancel(e2.id) is False
    assert a.count() == 0 and a.next_due_ms() is None
    a.close()
    b.close()
