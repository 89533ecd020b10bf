"""The fault schedule: seeded kill -9 and restart of processes while the load runs.

`plan(seed, duration_s, count)` spreads `count` faults over the run, one at a time: the kinds
cycle through `KINDS` in a seeded order (so a short run with at least six faults hits each
kind once), the target within a kind and the pause before the restart are seeded too.
`Schedule.run()` carries the plan out against a `Deployment`, logging every kill and restart
with wall-clock timestamps (seconds) to `faults.jsonl`. Faults never overlap and the gateway
is never killed: it is the callers' one door, and what is checked is everything behind it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TextIO

from bench.soak.deployment import RESTART_TIMEOUT_S, Deployment, Proc

#: Kinds of fault, each a role in the deployment.
KINDS = ("memcached", "gearmand", "storage", "tracker", "service", "worker")
#: The pause between a kill and the restart, in seconds: at least the first, plus up to the
#: second, seeded.
PAUSE_MIN_S = 1.0
PAUSE_SPAN_S = 2.0
#: No fault in the first and last this many seconds of the load (warm-up and wind-down).
MARGIN_S = 4.0
#: One fault per this many seconds of load by default.
DEFAULT_FAULT_EVERY_S = 20.0


@dataclass(frozen=True)
class Fault:
    """Kill `kind`'s process number `index` (modulo how many there are) at `at_s` seconds
    after the load starts, and restart it `pause_s` seconds later."""

    at_s: float
    kind: str
    index: int
    pause_s: float


def default_count(duration_s: float) -> int:
    """One fault per `DEFAULT_FAULT_EVERY_S`, and at least one of each kind."""
    return max(len(KINDS), int(duration_s / DEFAULT_FAULT_EVERY_S))


def plan(seed: int, duration_s: float, count: int) -> list[Fault]:
    """`count` faults evenly spaced (with seeded jitter) within the load's middle part."""
    rng = random.Random(f"faults/{seed}")
    span = max(0.0, duration_s - 2 * MARGIN_S - PAUSE_MIN_S - PAUSE_SPAN_S)
    slot = span / max(1, count)
    kinds: list[str] = []
    while len(kinds) < count:
        round_ = list(KINDS)
        rng.shuffle(round_)
        kinds += round_
    faults = []
    for i in range(count):
        pause = PAUSE_MIN_S + rng.random() * PAUSE_SPAN_S
        at = MARGIN_S + i * slot + rng.random() * max(0.0, slot - pause)
        faults.append(Fault(round(at, 3), kinds[i], rng.randrange(1000), round(pause, 3)))
    return faults


def targets(deployment: Deployment, kind: str) -> Sequence[Proc]:
    """The processes a fault of `kind` may hit."""
    if kind == "memcached":
        return list(deployment.memcached)
    if kind == "gearmand":
        return list(deployment.gearmand)
    if kind == "storage":
        return deployment.storage_nodes()
    if kind == "tracker":
        return [deployment.tracker()]
    if kind == "service":
        return deployment.service_instances()
    if kind == "worker":
        return list(deployment.workers)
    raise ValueError(f"unknown fault kind {kind!r}")


class Schedule:
    """Carries out a plan against a running deployment, logging each event to `log`."""

    def __init__(self, deployment: Deployment, faults: list[Fault], log: TextIO) -> None:
        self.deployment = deployment
        self.faults = faults
        self.log = log
        self.events: list[dict[str, object]] = []

    def _event(self, **fields: object) -> None:
        fields["t"] = time.time()
        self.events.append(fields)
        self.log.write(json.dumps(fields) + "\n")
        self.log.flush()

    def run(self, start_at: float, stop_at: float) -> None:
        """Injects each fault at its time (wall clock: `start_at + at_s`); returns by
        `stop_at` plus at most one restart (`RESTART_TIMEOUT_S`)."""
        for fault in self.faults:
            when = start_at + fault.at_s
            if when + fault.pause_s >= stop_at:
                break
            time.sleep(max(0.0, when - time.time()))
            pool = targets(self.deployment, fault.kind)
            proc = pool[fault.index % len(pool)]
            self._event(action="kill", kind=fault.kind, name=proc.name, pid=proc.pid,
                        fault=asdict(fault))
            proc.kill9()
            time.sleep(fault.pause_s)
            t0 = time.monotonic()
            try:
                proc.start(RESTART_TIMEOUT_S)
            except (RuntimeError, TimeoutError) as e:
                self._event(action="restart_failed", kind=fault.kind, name=proc.name,
                            error=str(e))
                continue
            self._event(action="restart", kind=fault.kind, name=proc.name, pid=proc.pid,
                        took_s=round(time.monotonic() - t0, 3))

    def injected(self) -> int:
        return sum(1 for e in self.events if e["action"] == "kill")
