"""Job functions the tests run in glammp workers (in-process, or by import path in a
`glammp worker` subprocess: `tests.jobs.jobfuncs:echo`)."""

from __future__ import annotations

import os
from collections import Counter

import gevent

from services.jobs.worker import JobFailed, WorkerJob

#: How many times each (function, workload) ran in this process.
RUNS: Counter[tuple[str, bytes]] = Counter()


def echo(job: WorkerJob) -> bytes:
    RUNS[(job.function, job.workload)] += 1
    return job.workload


def reverse(job: WorkerJob) -> bytes:
    return job.workload[::-1]


def stream(job: WorkerJob) -> str:
    """Streams two chunks, a warning and progress, then returns `done:<workload>`."""
    job.send_data(b"part1\0")
    job.send_status(1, 3)
    job.send_warning("careful \u2603")
    job.send_data(b"part2")
    job.send_status(2, 3)
    return "done:" + job.workload.decode()


def fail(job: WorkerJob) -> bytes:
    raise JobFailed()


def boom(job: WorkerJob) -> bytes:
    raise ValueError(f"boom for {job.workload.decode()}")


def slow(job: WorkerJob) -> bytes:
    """Sleeps `float(workload)` seconds, reporting progress, then echoes the workload."""
    RUNS[(job.function, job.workload)] += 1
    seconds = float(job.workload.decode() or "0")
    job.send_status(1, 2)
    gevent.sleep(seconds)
    job.send_status(2, 2)
    return job.workload


def pid(job: WorkerJob) -> str:
    """Answers with this worker process's pid (tells which worker ran the job)."""
    return str(os.getpid())


def hang_once(job: WorkerJob) -> str:
    """Blocks forever when the marker file in the workload does not exist yet (creating it);
    answers `pid` on the next run. Used to kill a worker mid-job."""
    path = job.workload.decode()
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        gevent.sleep(3600)
    return str(os.getpid())
