"""The job functions the soak's `glammp worker` processes serve.

    glammp worker --server H:P ... soak_record=bench.soak.jobfuncs:record \
        soak_echo=bench.soak.jobfuncs:echo

`record` writes the job's unique id to the SQLite file named by `$SOAK_RUNS_DB` before it
answers, so the checker can tell which acknowledged background jobs ran at least once even
when workers and gearmands were killed in between. Several workers share the file (WAL mode,
a busy timeout), and a job that runs twice is recorded twice: at least once is the contract.
"""

from __future__ import annotations

import os
import sqlite3
import time

from services.jobs.worker import WorkerJob

#: The environment variable naming the runs database.
RUNS_DB_ENV = "SOAK_RUNS_DB"
#: How long a write waits for another worker's transaction, in seconds.
BUSY_TIMEOUT_S = 30.0

_conn: sqlite3.Connection | None = None


def open_runs(path: str) -> sqlite3.Connection:
    """Opens (creating) the runs database: one row per run of a recorded job."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (uniq TEXT NOT NULL, pid INTEGER, at REAL)")
    return conn


def read_runs(path: str) -> set[str]:
    """Every unique id recorded so far (an empty set when the file does not exist yet)."""
    if not os.path.exists(path):
        return set()
    conn = open_runs(path)
    try:
        return {row[0] for row in conn.execute("SELECT uniq FROM runs")}
    finally:
        conn.close()


def record(job: WorkerJob) -> bytes:
    """Records the job's unique id (durably, before answering) and answers it."""
    global _conn
    if _conn is None:
        _conn = open_runs(os.environ[RUNS_DB_ENV])
    unique = job.unique.decode("utf-8", "replace")
    _conn.execute("INSERT INTO runs VALUES (?, ?, ?)", (unique, os.getpid(), time.time()))
    return job.unique


def echo(job: WorkerJob) -> bytes:
    """Answers the workload unchanged (foreground jobs check it byte for byte)."""
    return job.workload
