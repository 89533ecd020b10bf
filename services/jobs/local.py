"""How glammp starts a local gearmand (all-in-one `glammp serve`, tests, benchmarks).

The default keeps background jobs in gearmand's SQLite queue, so a background job that was
acknowledged (JOB_CREATED) survives a crash of gearmand. That costs submission rate: about 279
sequential background submits/s instead of ~10,000 with the in-memory queue on the reference
box. Foreground jobs are never persisted by gearmand.

Every handle is prefixed `H:<host>:<port>:` so that the jobs service can send `status(handle)`
and `cancel(handle)` straight to the gearmand that made the handle.
"""

from __future__ import annotations

#: Debian's gearmand binary.
GEARMAND = "/usr/sbin/gearmand"
#: gearmand I/O threads; two keep a small box responsive without oversubscribing it.
DEFAULT_THREADS = 2


def handle_prefix(host: str, port: int) -> str:
    """The job handle prefix a glammp-started gearmand uses (the handle adds `:<n>`)."""
    return f"H:{host}:{port}"


def gearmand_argv(port: int, host: str = "127.0.0.1", queue_db: str | None = None,
                  threads: int = DEFAULT_THREADS, log_file: str = "stderr",
                  binary: str = GEARMAND) -> list[str]:
    """The command line of a gearmand listening on host:port.

    `queue_db`: a SQLite file for the persistent queue of background jobs (None: in memory).
    The queue is written as jobs arrive; `--store-queue-on-shutdown` is deliberately not
    used, because with it nothing is written until a clean shutdown and a crash loses all.
    """
    argv = [binary, "-L", host, "-p", str(port), "-l", log_file, "--threads", str(threads),
            "--job-handle-prefix", handle_prefix(host, port)]
    if queue_db:
        argv += ["-q", "libsqlite3", f"--libsqlite3-db={queue_db}"]
    return argv
