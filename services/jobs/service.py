"""The Jobs Thrift handler: Gearman work for any Thrift language (see idl/jobs.thrift).

Errors (all ServiceError; the server core adds the request id):

=========================================  ====  =========  =================================
situation                                  code  retryable  notes
=========================================  ====  =========  =================================
bad name / unique / handle / batch size    400   no         `details.argument` names it
workload over `max_workload_bytes`         413   no
unknown or expired result (fetch_result)   404   no
no gearmand reachable; gearmand queue full 503   yes        nothing was queued
direct gearmand reply late (status, bg)    504   no
gearmand ERROR reply                       502   no
connection dropped after submitting        1001  no         the job may or may not have run
=========================================  ====  =========  =================================

A foreground job that outlives its deadline is not an error: `submit` returns a JobResult with
status TIMEOUT (the job keeps running in gearmand). The deadline is the smaller of
`Job.timeout_ms` (default `default_timeout_ms`) and what is left of the call's own deadline,
less `DEADLINE_MARGIN_S` so the answer leaves before the server's 504 would.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import gevent

import glammp.jobs.Jobs
from glammp.base.ttypes import Status
from glammp.jobs.ttypes import (
    FunctionStatus,
    Job,
    JobResult,
    JobState,
    JobStatus,
    Priority,
    Scheduled,
    Submitted,
    WorkerInfo,
)
from services.core import errors
from services.core.context import current_call
from services.jobs import protocol as p
from services.jobs.client import (
    DEFAULT_ADMIN_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    GearmanClient,
    check_function,
    normalize_unique,
    parse_server,
)
from services.jobs.results import DEFAULT_RETENTION_S, ResultStore
from services.jobs.schedule import DEFAULT_POLL_INTERVAL_S, Entry, Schedule, Scheduler

log = logging.getLogger(__name__)

SERVICE_NAME = "Jobs"
MODULE = glammp.jobs.Jobs
ORIGIN = "jobs"

#: Server deadlines per method, in ms. Foreground submits may wait for long jobs.
DEADLINES_MS: dict[str, int] = {
    "submit": 60_000,
    "submit_batch": 60_000,
    "submit_background": 10_000,
    "functions": 10_000,
    "workers": 10_000,
}
IDEMPOTENT: frozenset[str] = frozenset(
    {"status", "status_by_unique", "fetch_result", "functions", "workers", "cancel_scheduled",
     "cancel"})

DEFAULT_SERVERS = ("127.0.0.1:4730",)
#: The SQLite file holding the schedule and the result store (WAL; shared with workers).
DEFAULT_STATE_DB = "build/data/jobs-state.sqlite"
#: How long a foreground job is waited for when Job.timeout_ms is absent, in ms.
DEFAULT_TIMEOUT_MS = 30_000
#: Largest workload accepted, in bytes.
DEFAULT_MAX_WORKLOAD_BYTES = 16 * 1024 * 1024
#: Most jobs in one submit_batch.
DEFAULT_MAX_BATCH = 1000
#: Time kept back from the call's deadline so a TIMEOUT result beats the server's 504, in s.
DEADLINE_MARGIN_S = 0.05
#: How long health() waits for each gearmand's `version`, in s.
HEALTH_TIMEOUT_S = 1.0
#: The longest a background submit or status request may wait for gearmand, in s.
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobsConfig:
    """The `[jobs]` section.

    `state_db` is the SQLite file of the schedule and of finished jobs' results (glammp
    workers write there: `glammp worker --results-db` with the same path). Results are kept
    `result_retention_s` seconds; 0 turns the store off (fetch_result is then always 404).
    """

    servers: tuple[str, ...] = DEFAULT_SERVERS
    state_db: str = DEFAULT_STATE_DB
    result_retention_s: int = DEFAULT_RETENTION_S
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_workload_bytes: int = DEFAULT_MAX_WORKLOAD_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    connect_timeout_ms: int = int(DEFAULT_CONNECT_TIMEOUT_S * 1000)
    admin_timeout_ms: int = int(DEFAULT_ADMIN_TIMEOUT_S * 1000)
    schedule_poll_ms: int = int(DEFAULT_POLL_INTERVAL_S * 1000)

    def validate(self) -> None:
        if not self.servers:
            raise ValueError("servers: at least one gearmand host:port is needed")
        for s in self.servers:
            parse_server(s)
        if not self.state_db:
            raise ValueError("state_db: a path is needed")
        for name in ("default_timeout_ms", "max_workload_bytes", "max_batch",
                     "connect_timeout_ms", "admin_timeout_ms", "schedule_poll_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.result_retention_s < 0:
            raise ValueError("result_retention_s must be >= 0")


def _call_deadline(cap_s: float) -> float:
    """A monotonic deadline: `cap_s` from now, cut to the call's own deadline (less a margin)
    when the method is served by the server; called directly (tests), `cap_s` alone."""
    now = time.monotonic()
    call = current_call()
    left = cap_s if call is None else call.remaining() - DEADLINE_MARGIN_S
    return now + max(0.0, min(cap_s, left))


T = TypeVar("T")


def _parallel(calls: list[Callable[[], T]]) -> list[T | errors.ServiceError]:
    """Runs the calls in greenlets; each result is its value or the ServiceError it raised.

    ServiceErrors are caught inside the greenlets (gevent would print them as crashes);
    anything else propagates. If this greenlet is interrupted (a deadline), the calls are
    killed so none is left waiting.
    """

    def run(call: Callable[[], T]) -> T | errors.ServiceError:
        try:
            return call()
        except errors.ServiceError as e:
            return e

    greenlets = [gevent.spawn(run, c) for c in calls]
    try:
        gevent.joinall(greenlets, raise_error=True)
    finally:
        gevent.killall([g for g in greenlets if not g.dead], block=False)
    return [g.value for g in greenlets]


def _priority(job: Job) -> int:
    prio = Priority.NORMAL if job.priority is None else job.priority
    if prio not in (Priority.NORMAL, Priority.HIGH, Priority.LOW):
        raise errors.bad_request(f"unknown priority {prio}", argument="priority")
    return int(prio)


class JobsHandler:
    """Serves the Jobs methods; see the module docstring for errors and deadlines."""

    def __init__(self, config: JobsConfig) -> None:
        self.config = config
        self.client = GearmanClient(config.servers, config.connect_timeout_ms / 1000,
                                    config.admin_timeout_ms / 1000)
        self.delays = Schedule(config.state_db)
        self.results = (ResultStore(config.state_db, config.result_retention_s)
                        if config.result_retention_s > 0 else None)
        self.scheduler = Scheduler(self.delays, self._submit_entry,
                                   config.schedule_poll_ms / 1000)
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()
        self.client.close()
        self.delays.close()
        if self.results is not None:
            self.results.close()

    def health(self) -> tuple[int, str]:
        """ALIVE when every gearmand answers `version` within HEALTH_TIMEOUT_S, else WARNING."""
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        probes = _parallel([partial(self.client.admin, a, "version", deadline, False)
                            for a in self.client.addresses])
        up = [r for r in probes if not isinstance(r, errors.ServiceError)]
        n = len(self.client.addresses)
        status = Status.ALIVE if len(up) == n else Status.WARNING
        return status, f"{len(up)}/{n} gearmand reachable; {self.delays.count()} scheduled"

    # -- checks ---------------------------------------------------------------------------

    def _check(self, job: Job | None) -> tuple[Job, bytes, int]:
        if job is None:
            raise errors.bad_request("job is required", argument="job")
        check_function(job.name)
        workload = job.workload or b""
        if isinstance(workload, str):
            workload = workload.encode("utf-8")
        if len(workload) > self.config.max_workload_bytes:
            raise errors.too_large(f"workload of {len(workload)} bytes is over "
                                   f"{self.config.max_workload_bytes}", argument="workload")
        return job, workload, _priority(job)

    def _fg_deadline(self, job: Job) -> float:
        timeout_ms = job.timeout_ms if job.timeout_ms is not None else \
            self.config.default_timeout_ms
        if timeout_ms <= 0:
            raise errors.bad_request("timeout_ms must be positive", argument="timeout_ms")
        return _call_deadline(timeout_ms / 1000)

    # -- submitting -----------------------------------------------------------------------

    def submit(self, job: Job) -> JobResult:
        job, workload, prio = self._check(job)
        return self.client.submit(job.name, workload, job.unique, prio, self._fg_deadline(job))

    def submit_batch(self, jobs: list[Job]) -> list[JobResult]:
        if not jobs:
            return []
        if len(jobs) > self.config.max_batch:
            raise errors.bad_request(f"batch of {len(jobs)} jobs is over {self.config.max_batch}",
                                     argument="jobs")
        checked = [self._check(j) for j in jobs]
        outcomes = _parallel([partial(self.client.submit, j.name, w, j.unique, prio,
                                      self._fg_deadline(j)) for j, w, prio in checked])
        results: list[JobResult] = []
        failures = []
        for outcome in outcomes:
            if isinstance(outcome, JobResult):
                results.append(outcome)
                continue
            failures.append(outcome)
            results.append(JobResult(status=JobStatus.FAILED, data=b"", chunks=[], warnings=[],
                                     numerator=0, denominator=0,
                                     exception_text=f"{outcome.code}: {outcome.message}".encode(),
                                     handle=""))
        if len(failures) == len(outcomes):
            raise failures[0]
        return results

    def submit_background(self, job: Job) -> Submitted:
        job, workload, prio = self._check(job)
        handle, unique = self.client.submit_background(job.name, workload, job.unique, prio,
                                                       _call_deadline(REQUEST_TIMEOUT_S))
        return Submitted(handle=handle, unique=unique)

    def schedule(self, job: Job, run_at_ms: int) -> Scheduled:
        """Stores the job; it is submitted in the background (unique kept) when due."""
        job, workload, prio = self._check(job)
        if run_at_ms is None or run_at_ms < 0:
            raise errors.bad_request("run_at_ms must be a time in ms since the epoch",
                                     argument="run_at_ms")
        unique = normalize_unique(job.unique).decode("utf-8")
        entry = self.delays.add(job.name, unique, prio, workload, run_at_ms)
        self.scheduler.wake()
        return Scheduled(id=entry.id, run_at_ms=entry.run_at_ms, unique=entry.unique)

    def cancel_scheduled(self, id: str) -> bool:
        if not id:
            raise errors.bad_request("id is required", argument="id")
        return self.delays.cancel(id)

    def _submit_entry(self, entry: Entry) -> str:
        handle, _ = self.client.submit_background(entry.function, entry.workload, entry.unique,
                                                  entry.priority,
                                                  time.monotonic() + REQUEST_TIMEOUT_S)
        return handle

    # -- asking ---------------------------------------------------------------------------

    def status(self, handle: str) -> JobState:
        return self.client.status(handle or "", _call_deadline(REQUEST_TIMEOUT_S))

    def status_by_unique(self, unique: str) -> JobState:
        return self.client.status_by_unique(unique or "", _call_deadline(REQUEST_TIMEOUT_S))

    def fetch_result(self, handle: str) -> JobResult:
        if not handle:
            raise errors.bad_request("handle is required", argument="handle")
        result = self.results.get(handle) if self.results is not None else None
        if result is None:
            raise errors.not_found(f"no stored result for {handle}", handle=handle)
        return result

    def _each_server(self, command: str) -> list[tuple[str, list[str]]]:
        """Runs an admin listing on every server in parallel; 503 only when none answered."""
        deadline = _call_deadline(self.config.admin_timeout_ms / 1000)
        addresses = self.client.addresses
        replies = _parallel([partial(self.client.admin, a, command, deadline)
                             for a in addresses])
        out = []
        first_error: errors.ServiceError | None = None
        for address, reply in zip(addresses, replies, strict=True):
            if isinstance(reply, errors.ServiceError):
                log.warning("gearmand %s: %s failed: %s", address, command, reply.message)
                first_error = first_error or reply
            else:
                out.append((address, reply))
        if not out:
            raise first_error or errors.unavailable("no gearmand answered")
        return out

    def functions(self) -> list[FunctionStatus]:
        """`status` + `prioritystatus` of every reachable server, summed per function."""
        by_name: dict[str, FunctionStatus] = {}

        def entry(name: str) -> FunctionStatus:
            if name not in by_name:
                by_name[name] = FunctionStatus(name=name, total=0, running=0, workers=0,
                                               queued_high=0, queued_normal=0, queued_low=0)
            return by_name[name]

        try:
            for _, lines in self._each_server("status"):
                for f in p.parse_status(lines):
                    e = entry(f.name)
                    e.total += f.total
                    e.running += f.running
                    e.workers += f.workers
            for _, lines in self._each_server("prioritystatus"):
                if lines and lines[0].startswith("ERR "):
                    continue  # a gearmand without prioritystatus: per-priority counts stay 0
                for q in p.parse_priority_status(lines):
                    e = entry(q.name)
                    e.queued_high += q.high
                    e.queued_normal += q.normal
                    e.queued_low += q.low
        except p.ProtocolError as exc:
            raise errors.bad_gateway(f"gearmand sent a malformed admin reply: {exc}") from None
        return [by_name[n] for n in sorted(by_name)]

    def workers(self) -> list[WorkerInfo]:
        """Connections that registered at least one function, on every reachable server."""
        out = []
        try:
            for address, lines in self._each_server("workers"):
                for w in p.parse_workers(lines):
                    if w.functions:
                        out.append(WorkerInfo(server=address, ip=w.ip, client_id=w.client_id,
                                              functions=list(w.functions)))
        except p.ProtocolError as exc:
            raise errors.bad_gateway(f"gearmand sent a malformed admin reply: {exc}") from None
        return out

    def cancel(self, handle: str) -> bool:
        return self.client.cancel(handle or "", _call_deadline(REQUEST_TIMEOUT_S))


def create(config: JobsConfig) -> JobsHandler:
    """The handler for `config`; its directory for `state_db` is created when missing."""
    parent = os.path.dirname(config.state_db)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return JobsHandler(config)
