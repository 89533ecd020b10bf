"""Delayed jobs: a durable SQLite schedule and the greenlet that submits jobs when they are due.

gearmand 1.1.20's SUBMIT_JOB_EPOCH leaves sleeping workers asleep at the due time and starves
lower-priority jobs, so glammp keeps delays itself. A scheduled job is a row in a WAL-mode
SQLite file; when it is due the `Scheduler` submits it as a background job with its unique
kept, and deletes the row only after gearmand acknowledged it (JOB_CREATED). The guarantee is
at-least-once: a crash between JOB_CREATED and the delete submits the job again on restart,
and the kept unique makes gearmand coalesce it while the first copy is still queued.

Several service processes may share one file: a due row is claimed with an atomic UPDATE
(`claimed_until`, a lease of `CLAIM_LEASE_S`) before it is submitted, so only one of them
submits it unless that one dies holding the lease.

Timing: the scheduler sleeps until the earliest due row, at most `poll_interval_s` (rows added
by other processes are seen within that), and is woken at once by `add()` in this process.
A submission that fails (no gearmand reachable) is retried after `RETRY_DELAY_S`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import gevent.event

from glammp.common.ttypes import ServiceError
from services.jobs.results import connect

log = logging.getLogger(__name__)

#: Longest sleep between two looks at the schedule, in seconds.
DEFAULT_POLL_INTERVAL_S = 0.5
#: How long a claimed row is reserved for the process that claimed it, in seconds.
CLAIM_LEASE_S = 30.0
#: Pause before a due job whose submission failed is tried again, in seconds.
RETRY_DELAY_S = 1.0
#: Most rows submitted per look.
BATCH_ROWS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scheduled_jobs (
    id TEXT PRIMARY KEY,
    run_at_ms INTEGER NOT NULL,
    function TEXT NOT NULL,
    unique_key TEXT NOT NULL,
    priority INTEGER NOT NULL,
    workload BLOB NOT NULL,
    claimed_until_ms INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS scheduled_jobs_due ON scheduled_jobs (run_at_ms);
"""


@dataclass(frozen=True)
class Entry:
    """One scheduled job."""

    id: str
    run_at_ms: int
    function: str
    unique: str
    priority: int
    workload: bytes


def now_ms() -> int:
    return int(time.time() * 1000)


class Schedule:
    """The table of scheduled jobs in the SQLite file at `path` (created when missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)

    def add(self, function: str, unique: str, priority: int, workload: bytes,
            run_at_ms: int) -> Entry:
        entry = Entry(uuid.uuid4().hex, run_at_ms, function, unique, priority, workload)
        self._db.execute(
            "INSERT INTO scheduled_jobs (id, run_at_ms, function, unique_key, priority, workload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (entry.id, run_at_ms, function, unique, priority, workload))
        return entry

    def cancel(self, entry_id: str) -> bool:
        """Deletes the entry; False when it was not there (already submitted or unknown)."""
        return self._db.execute("DELETE FROM scheduled_jobs WHERE id = ?",
                                (entry_id,)).rowcount > 0

    def claim_due(self, at_ms: int, limit: int = BATCH_ROWS) -> list[Entry]:
        """Claims up to `limit` entries due at `at_ms` and not leased by anyone."""
        rows = self._db.execute(
            "SELECT id, run_at_ms, function, unique_key, priority, workload FROM scheduled_jobs"
            " WHERE run_at_ms <= ? AND claimed_until_ms <= ? ORDER BY run_at_ms LIMIT ?",
            (at_ms, at_ms, limit)).fetchall()
        claimed = []
        lease = at_ms + int(CLAIM_LEASE_S * 1000)
        for row in rows:
            took = self._db.execute(
                "UPDATE scheduled_jobs SET claimed_until_ms = ?, attempts = attempts + 1"
                " WHERE id = ? AND claimed_until_ms <= ?", (lease, row[0], at_ms)).rowcount
            if took:
                claimed.append(Entry(row[0], row[1], row[2], row[3], row[4], bytes(row[5])))
        return claimed

    def release(self, entry_id: str, retry_at_ms: int) -> None:
        """Gives a claimed entry back, to be tried again at `retry_at_ms`."""
        self._db.execute("UPDATE scheduled_jobs SET claimed_until_ms = ? WHERE id = ?",
                         (retry_at_ms, entry_id))

    def delete(self, entry_id: str) -> None:
        self._db.execute("DELETE FROM scheduled_jobs WHERE id = ?", (entry_id,))

    def next_due_ms(self) -> int | None:
        """When the earliest entry becomes due or its lease ends, in ms since the epoch."""
        row = self._db.execute(
            "SELECT MIN(MAX(run_at_ms, claimed_until_ms)) FROM scheduled_jobs").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM scheduled_jobs").fetchone()[0])

    def close(self) -> None:
        self._db.close()


#: Submits one entry in the background; returns the handle or raises ServiceError.
Submitter = Callable[[Entry], str]


class Scheduler:
    """The greenlet that submits due entries of a `Schedule` through `submit`."""

    def __init__(self, schedule: Schedule, submit: Submitter,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
        self.schedule = schedule
        self.submit = submit
        self.poll_interval_s = poll_interval_s
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        g, self._greenlet = self._greenlet, None
        if g is not None:
            g.kill()

    def wake(self) -> None:
        """Look at the schedule now (an entry was added)."""
        self._wake.set()

    def run_due(self) -> int:
        """Submits every entry due now; returns how many were submitted."""
        submitted = 0
        while True:
            entries = self.schedule.claim_due(now_ms())
            for entry in entries:
                try:
                    handle = self.submit(entry)
                except ServiceError as e:
                    log.warning("scheduled job %s not submitted (%s); retrying", entry.id,
                                e.message)
                    self.schedule.release(entry.id, now_ms() + int(RETRY_DELAY_S * 1000))
                    continue
                self.schedule.delete(entry.id)
                submitted += 1
                log.info("scheduled job %s submitted as %s", entry.id, handle)
            if len(entries) < BATCH_ROWS:
                return submitted

    def _run(self) -> None:
        while True:
            # Cleared before looking, so an add() during the look is not missed.
            self._wake.clear()
            try:
                self.run_due()
                due = self.schedule.next_due_ms()
            except Exception:
                log.exception("schedule %s failed; trying again", self.schedule.path)
                due = None
            sleep_s = self.poll_interval_s
            if due is not None:
                sleep_s = min(sleep_s, max(0.0, (due - now_ms()) / 1000))
            self._wake.wait(timeout=sleep_s)
