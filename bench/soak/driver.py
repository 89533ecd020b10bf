"""One load-driver process: `python -m bench.soak.driver SPEC.json INDEX`.

Runs `greenlets` callers against the gateway from `start_at` until `start_at + duration_s`
(wall clock, seconds), each at most `max_calls` calls, and writes one JSON line per call to
`<out>/history-d<INDEX>.jsonl`:

    {"op": "cache.get", "key": ..., "t0": wall s, "t1": wall s, "dl": deadline s,
     "out": "ok" | "err" | "exc", ...}

`err` is a ServiceError (`code`, `retryable`, `origin`); `exc` is anything else that reached
the caller (transport error, TApplicationException, a socket timeout past the deadline),
with its type in `exc`. Operation fields: cache.put `w`, `s` (writer, sequence); cache.get
`found`, `val` (the bytes as Latin-1); file.store / file.fetch `key`, `match`; job.bg / job.fg
`key` (the unique id), fg `status`, `match`.

Every call's socket timeout is its deadline plus `SOCKET_SLACK_S`, so no call can hang the
driver; a connection that saw any non-ServiceError failure is replaced.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, TextIO  # noqa: E402

import gevent  # noqa: E402

from bench.soak import workload  # noqa: E402
from glammp.common.ttypes import ServiceError  # noqa: E402
from glammp.jobs.ttypes import Job, JobStatus  # noqa: E402
from services.client import connect  # noqa: E402

#: A caller's socket waits this much longer than the call's deadline, in seconds: the
#: gateway answers a late call with 504 at the deadline, so reaching the timeout is a hang.
SOCKET_SLACK_S = 3.0
#: Operation -> relative weight in the mix.
MIX: dict[str, int] = {"cache.put": 30, "cache.get": 40, "file.store": 6, "file.fetch": 6,
                       "job.bg": 12, "job.fg": 6}
#: Foreground jobs ask gearmand for their outcome within this, in milliseconds.
FG_JOB_TIMEOUT_MS = 3000
#: History lines are flushed at least this often, in seconds.
FLUSH_INTERVAL_S = 1.0


@dataclass
class Spec:
    """What a driver does; written by the soak as JSON."""

    host: str
    port: int
    out_dir: str
    start_at: float
    duration_s: float
    greenlets: int
    max_calls: int
    think_ms: float
    seed: int
    deadlines_ms: dict[str, int] = field(default_factory=dict)


class Caller:
    """One greenlet's connections (one per service) and its share of the work."""

    def __init__(self, spec: Spec, name: str, rng: random.Random, out: TextIO) -> None:
        self.spec = spec
        self.name = name
        self.rng = rng
        self.out = out
        self.seq = 0
        self.stored: list[str] = []
        self.conns: dict[str, connect] = {}
        self.clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self.clients:
            timeout = self.spec.deadlines_ms[service] / 1000 + SOCKET_SLACK_S
            conn = connect(self.spec.host, self.spec.port, service, timeout_s=timeout)
            self.clients[service] = conn.__enter__()
            self.conns[service] = conn
        return self.clients[service]

    def drop(self, service: str) -> None:
        conn = self.conns.pop(service, None)
        self.clients.pop(service, None)
        if conn is not None:
            conn.__exit__(None, None, None)

    def close(self) -> None:
        for service in list(self.conns):
            self.drop(service)

    def call(self, service: str, op: str, record: dict[str, Any],
             fn: Callable[[Any], dict[str, Any]]) -> None:
        """Runs `fn(client)`, timing it, and writes the record with its outcome."""
        record.update(op=op, c=self.name, dl=self.spec.deadlines_ms[service] / 1000)
        record["t0"] = time.time()
        try:
            record.update(fn(self.client(service)))
            record["out"] = "ok"
        except ServiceError as e:
            record.update(out="err", code=e.code, retryable=bool(e.retryable),
                          origin=e.origin or "")
        except Exception as e:  # anything else at the caller is what the checker flags
            record.update(out="exc", exc=type(e).__name__, msg=str(e)[:200])
            self.drop(service)
        record["t1"] = time.time()
        self.out.write(json.dumps(record) + "\n")

    def step(self) -> None:
        op = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        self.seq += 1
        unique = f"{self.name}-{self.seq}"
        if op == "cache.put":
            key = workload.cache_key(self.rng.randrange(workload.CACHE_KEYS))
            value = workload.cache_value(key, self.name, self.seq)
            self.call("Cache", op, {"key": key, "w": self.name, "s": self.seq},
                      lambda c: {"res": c.put(key, value, None)})
        elif op == "cache.get":
            key = workload.cache_key(self.rng.randrange(workload.CACHE_KEYS))

            def get(c: Any) -> dict[str, Any]:
                item = c.get(key, None)
                if not item.found:
                    return {"found": False}
                return {"found": True, "val": bytes(item.value).decode("latin-1")}

            self.call("Cache", op, {"key": key}, get)
        elif op == "file.store" or not self.stored:
            key = f"soak/{unique}"

            def store(c: Any) -> dict[str, Any]:
                info = c.store("", key, workload.file_data(key), None)
                self.stored.append(key)
                return {"len": info.length}

            self.call("Filestore", "file.store", {"key": key}, store)
        elif op == "file.fetch":
            key = self.rng.choice(self.stored)
            self.call("Filestore", op, {"key": key},
                      lambda c: {"match": c.fetch("", key, None) == workload.file_data(key)})
        elif op == "job.bg":
            self.call("Jobs", op, {"key": unique}, lambda c: {"handle": c.submit_background(
                Job(name=workload.RECORD_FUNCTION, workload=unique.encode(), unique=unique))
                .handle})
        else:
            want = workload.echo_workload(unique)

            def fg(c: Any) -> dict[str, Any]:
                r = c.submit(Job(name=workload.ECHO_FUNCTION, workload=want, unique=unique,
                                 timeout_ms=FG_JOB_TIMEOUT_MS))
                return {"status": r.status,
                        "match": r.status != JobStatus.COMPLETE or r.data == want}

            self.call("Jobs", op, {"key": unique}, fg)

    def run(self) -> None:
        end = self.spec.start_at + self.spec.duration_s
        gevent.sleep(max(0.0, self.spec.start_at - time.time()) + self.rng.random() * 0.2)
        try:
            for _ in range(self.spec.max_calls):
                if time.time() >= end:
                    break
                self.step()
                gevent.sleep(self.rng.expovariate(1000 / self.spec.think_ms)
                             if self.spec.think_ms > 0 else 0)
        finally:
            self.close()


def run(spec: Spec, index: int) -> int:
    """Runs every caller of driver `index` to the end; the number of calls made."""
    path = f"{spec.out_dir}/history-d{index}.jsonl"
    with open(path, "w") as out:
        callers = [Caller(spec, f"d{index}g{i}", random.Random(f"{spec.seed}/{index}/{i}"), out)
                   for i in range(spec.greenlets)]
        flusher = gevent.spawn(_flush_every, out)
        try:
            gevent.joinall([gevent.spawn(c.run) for c in callers], raise_error=True)
        finally:
            flusher.kill()
        return sum(c.seq for c in callers)


def _flush_every(out: TextIO) -> None:
    while True:
        gevent.sleep(FLUSH_INTERVAL_S)
        out.flush()


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        spec = Spec(**json.load(f))
    calls = run(spec, int(argv[1]))
    print(f"driver {argv[1]}: {calls} calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
