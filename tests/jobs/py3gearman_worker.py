"""A python3-gearman worker for the interop tests (plain threads, no gevent):
python py3gearman_worker.py HOST:PORT FUNCTION — answers the upper-cased workload."""

import sys

import python3_gearman


def upper(worker: object, job: object) -> str:
    return job.data.upper()  # type: ignore[attr-defined]


worker = python3_gearman.GearmanWorker([sys.argv[1]])
worker.register_task(sys.argv[2], upper)
print("ready", flush=True)
worker.work()
