"""The result store: outcomes of finished jobs, kept for a while so `fetch_result(handle)` works.

Why a shared SQLite file: gearmand forgets a background job's result the moment the worker
sends WORK_COMPLETE (no client is attached to hear it), so the result has to be saved by the
worker itself. glammp workers and the jobs service run as separate processes, usually on one
host next to the service (the supervisord example), and a WAL-mode SQLite file is durable,
needs no extra server, lets many writer processes append and readers read concurrently, and
survives a restart of either side. Installations whose workers run on other hosts point every
worker and service at a path on shared storage, or leave the store off (`fetch_result` is then
404 for everything).

Rows are keyed by job handle; a newer result for the same handle replaces the older one
(gearmand restarts its handle counter when it restarts). Rows older than the retention are
deleted on writes (at most every `PURGE_INTERVAL_S`) and never returned.

SQLite calls block the calling greenlet for the duration of one small statement; the
`busy_timeout` bounds waiting for another process's write lock, in ms.
"""

from __future__ import annotations

import sqlite3
import time

from thrift.TSerialization import deserialize, serialize

from glammp.jobs.ttypes import JobResult

#: How long results are kept by default, in seconds.
DEFAULT_RETENTION_S = 24 * 3600
#: Minimum pause between two purges of expired rows, in seconds.
PURGE_INTERVAL_S = 60.0
#: How long a statement waits for another process's lock, in ms.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_results (
    handle TEXT PRIMARY KEY,
    finished_at REAL NOT NULL,
    result BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS job_results_finished ON job_results (finished_at);
"""


def connect(path: str) -> sqlite3.Connection:
    """Opens (creating) a WAL-mode SQLite database in autocommit mode."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


class ResultStore:
    """Job results by handle in the SQLite file at `path`, kept `retention_s` seconds."""

    def __init__(self, path: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = path
        self.retention_s = retention_s
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._last_purge = 0.0

    def put(self, result: JobResult, finished_at: float) -> None:
        """Stores `result` (its `handle` is the key); `finished_at` is a Unix time in s."""
        blob = serialize(result)
        self._db.execute(
            "INSERT OR REPLACE INTO job_results (handle, finished_at, result) VALUES (?, ?, ?)",
            (result.handle, finished_at, blob),
        )
        if finished_at - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = finished_at
            self.purge(finished_at)

    def get(self, handle: str, now: float | None = None) -> JobResult | None:
        """The stored result for `handle`, or None when unknown or older than the retention."""
        now = time.time() if now is None else now
        row = self._db.execute(
            "SELECT result FROM job_results WHERE handle = ? AND finished_at >= ?",
            (handle, now - self.retention_s),
        ).fetchone()
        if row is None:
            return None
        return deserialize(JobResult(), row[0])  # type: ignore[no-any-return]

    def purge(self, now: float) -> int:
        """Deletes rows past the retention; returns how many."""
        cur = self._db.execute("DELETE FROM job_results WHERE finished_at < ?",
                               (now - self.retention_s,))
        return cur.rowcount

    def close(self) -> None:
        self._db.close()
