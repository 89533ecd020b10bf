"""`glammp worker`: serve Python functions as Gearman workers.

    glammp worker --server 127.0.0.1:4730 [--server ...] [--concurrency N] [--max-jobs N]
                  [--results-db PATH [--result-retention-s S]] [--client-id ID]
                  [name=]package.module:function ...

SIGTERM and SIGINT stop grabbing jobs; the process exits once the running jobs are done (exit
code 0). With `--max-jobs` it exits the same way after that many jobs, for a supervisor
(see examples/supervisord/) to start a fresh one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3

import gevent

from services.jobs.results import DEFAULT_RETENTION_S, ResultStore
from services.jobs.worker import DEFAULT_CONCURRENCY, JobFunction, Worker, load_function

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="run Python functions as Gearman workers")
    w.add_argument("--server", action="append", required=True, metavar="HOST:PORT",
                   help="a gearmand to take jobs from (repeatable)")
    w.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help="jobs run at once in this process (gevent)")
    w.add_argument("--max-jobs", type=int, default=0,
                   help="exit after this many jobs (0: never)")
    w.add_argument("--results-db", default=None,
                   help="store each job's outcome in this SQLite file (the jobs service's "
                        "state_db) so fetch_result(handle) finds it")
    w.add_argument("--result-retention-s", type=int, default=DEFAULT_RETENTION_S,
                   help="how long stored results are kept, in s (match [jobs] "
                        "result_retention_s; expired rows are purged on writes)")
    w.add_argument("--client-id", default="glammp-worker", help="shown by gearmand `workers`")
    w.add_argument("functions", nargs="+", metavar="[NAME=]MODULE:FUNCTION")
    w.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    try:
        functions: dict[str, JobFunction] = dict(load_function(s) for s in args.functions)
        results = (ResultStore(args.results_db, args.result_retention_s)
                   if args.results_db else None)
        worker = Worker(args.server, functions, concurrency=args.concurrency,
                        max_jobs=args.max_jobs, client_id=args.client_id, results=results)
    except (ValueError, sqlite3.Error) as e:
        log.error("glammp worker: %s", e)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, worker.stop)
    log.info("worker serving %s from %s", ", ".join(sorted(functions)), ", ".join(args.server))
    worker.run()
    if results is not None:
        results.close()
    return 0
