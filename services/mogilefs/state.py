"""What the tracker's command handlers and workers share: store, topology, fid locks, wake-ups.

Fid locks are in memory: one tracker process owns the database. A worker that cannot take the
lock for a fid skips it and comes back on its next pass.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import gevent.event

from services.mogilefs.config import TrackerSpec
from services.mogilefs.devices import Topology
from services.mogilefs.httpclient import HeadClient
from services.mogilefs.store import Store

#: Replication retry delays in seconds (×0.8–1.2 jitter, × `retry_scale`); the last repeats.
REPLICATE_BACKOFF_S = (15, 60, 300, 1800, 3600, 7200, 14400, 28800, 86400)


class CommandError(Exception):
    """A command's `ERR <code> <text>` reply; `text` None means the code's standard text."""

    def __init__(self, code: str, text: str | None = None) -> None:
        super().__init__(code if text is None else f"{code}: {text}")
        self.code = code
        self.text = text


class TrackerState:
    """Everything one tracker process shares between connections and workers."""

    def __init__(self, spec: TrackerSpec) -> None:
        self.spec = spec
        self.store = Store(spec.db_path, spec.sqlite_synchronous.upper())
        self.topology = Topology(self.store)
        self.heads = HeadClient()
        self.started = time.time()
        self.locks: set[int] = set()
        self.replicate_wakeup = gevent.event.Event()
        self.delete_wakeup = gevent.event.Event()
        #: Runs one monitor round now (optionally for some devids) and returns when it is done.
        self.monitor_round: Callable[[list[int] | None], None] = lambda devids: None
        self.queries = 0
        self.processing = 0

    def lock(self, fid: int) -> bool:
        """Takes the fid lock if it is free."""
        if fid in self.locks:
            return False
        self.locks.add(fid)
        return True

    def unlock(self, fid: int) -> None:
        self.locks.discard(fid)

    def backoff(self, failcount: int) -> float:
        """When (unix s) a replication that failed `failcount` times before is retried."""
        base = REPLICATE_BACKOFF_S[min(failcount, len(REPLICATE_BACKOFF_S) - 1)]
        return time.time() + base * random.uniform(0.8, 1.2) * self.spec.retry_scale

    def retry_in(self, seconds: float) -> float:
        return time.time() + seconds * self.spec.retry_scale

    def setting(self, key: str) -> str | None:
        return self.store.settings().get(key)

    def flag_setting(self, key: str) -> bool:
        return (self.setting(key) or "0").lower() in ("1", "t", "on", "y", "yes", "true")

    def close(self) -> None:
        self.heads.close()
        self.store.close()
