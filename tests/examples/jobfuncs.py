"""The job function the examples call, served by a `glammp worker` the tests start:
`glammp worker --server HOST:PORT reverse=tests.examples.jobfuncs:reverse`."""

from __future__ import annotations

from services.jobs.worker import WorkerJob


def reverse(job: WorkerJob) -> bytes:
    """Answers the workload reversed, byte by byte."""
    return job.workload[::-1]
