"""The replicator: copies files until each satisfies its class's replication policy.

Polls `file_to_replicate` every `replicate_interval_s` (or at once when woken by create_close,
updateclass, replicate_now or the reaper) and works on up to `replicate_workers` fids at a time,
each under its fid lock. For one fid it repeats: ask the policy whether the copies suffice; if
not, pick a destination (writeable device the policy likes) and a random readable source, and
stream GET → PUT (`httpclient.copy`, 1 MiB chunks, never the whole file in memory).

Crash safety: the destination is recorded as a stray copy before the PUT (`Store.begin_copy`)
and claimed by `file_on` after it, so a copy interrupted by a kill -9 is deleted by the cleaner
instead of being left orphaned.

Failures back off (15 s, 60 s, 5 min … 24 h, × jitter × `retry_scale`). A file with no copy at
all is parked until the end of time (`no_source`), like MogileFS; `replicate_now` wakes it.
A file with more copies than its policy needs (its class shrank) loses the extra ones.
"""

from __future__ import annotations

import logging
import random
import time

import gevent
import gevent.pool

from services.mogilefs import httpclient, policy
from services.mogilefs.devices import Device
from services.mogilefs.state import TrackerState
from services.mogilefs.store import HASHNAMES, NEVER, Row

log = logging.getLogger(__name__)

#: Most copies made for one fid in one attempt (a policy wanting more waits for the next pass).
MAX_COPIES_PER_PASS = 8
#: Fids fetched from the queue per poll.
POLL_BATCH = 200


class Replicator:
    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.spec = state.spec
        self.pool = gevent.pool.Pool(self.spec.replicate_workers)
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()
        self.pool.kill()

    def _run(self) -> None:
        while True:
            self.state.replicate_wakeup.wait(self.spec.replicate_interval_s)
            self.state.replicate_wakeup.clear()
            try:
                for row in self.state.store.due_replications(time.time(), POLL_BATCH):
                    if row["fid"] in self.state.locks:
                        continue
                    self.pool.wait_available()
                    self.pool.spawn(self.replicate, row)
            except Exception:
                log.exception("replication poll failed")

    def replicate(self, row: Row) -> None:
        """Works on one queued fid until its policy is happy or an attempt fails."""
        fid = row["fid"]
        if not self.state.lock(fid):
            return
        try:
            outcome = self._replicate(fid)
        except Exception:
            log.exception("replicating fid %d failed", fid)
            outcome = "failure"
        finally:
            self.state.unlock(fid)
        store = self.state.store
        if outcome == "no_source":
            store.retry_replication(fid, NEVER)
        elif outcome != "done":
            log.info("replication of fid %d postponed: %s", fid, outcome)
            store.retry_replication(fid, self.state.backoff(row["failcount"]))

    def _replicate(self, fid: int) -> str:
        store = self.state.store
        file = store.file(fid)
        if file is None:
            store.replication_done(fid, 0)
            return "done"
        crow = store.class_by_id(file["dmid"], file["classid"])
        if crow is None:
            rule, mindevcount, hashtype = policy.DEFAULT, self.spec.default_mindevcount, 0
        else:
            rule = policy.parse(crow["replpolicy"])
            mindevcount, hashtype = crow["mindevcount"], crow["hashtype"] or 0
        for _ in range(MAX_COPIES_PER_PASS):
            devs = self.state.topology.snapshot()
            copies = [devs[d] for d in store.file_devids(fid) if d in devs]
            if policy.happy(rule, mindevcount, copies, list(devs.values())):
                copies = self._trim(fid, rule, mindevcount, copies, list(devs.values()))
                store.replication_done(fid, len(copies))
                return "done"
            if not copies:
                return "no_source"
            sources = [d for d in copies if d.readable()]
            if not sources:
                return "no_readable_source"
            candidates = self.state.topology.writeable(self.spec.min_free_space_mb,
                                                       file["length"] or 0, devs)
            dst = policy.target(rule, copies, candidates)
            if dst is None:
                return "policy_no_suggestions"
            src = random.choice(sources)
            if not self._copy(fid, file["length"] or 0, hashtype, src.url(fid), dst.url(fid),
                              dst.devid):
                return f"copy to dev{dst.devid} failed"
        return "too many copies in one pass"

    def _trim(self, fid: int, rule: policy.Policy, mindevcount: int, copies: list[Device],
              devices: list[Device]) -> list[Device]:
        """Drops copies the policy stays happy without ("too happy", e.g. after updateclass to
        a smaller class); drain devices go first. Dropped copies become strays to delete."""
        order = sorted(copies, key=lambda d: (d.status != "drain", -d.devid))
        for d in order:
            rest = [c for c in copies if c.devid != d.devid]
            if d.deletable() and policy.happy(rule, mindevcount, rest, devices):
                self.state.store.remove_copy(fid, d.devid)
                self.state.delete_wakeup.set()
                copies = rest
        return copies

    def _copy(self, fid: int, length: int, hashtype: int, src: str, dst: str,
              devid: int) -> bool:
        store = self.state.store
        stored = store.checksum(fid)
        hashname = HASHNAMES.get(stored[0] if stored else hashtype)
        md5 = httpclient.md5_b64(stored[1]) if stored and stored[0] == 1 else None
        store.begin_copy(fid, devid, self.spec.copy_hold_s)
        try:
            digest = httpclient.copy(src, dst, length, self.spec.copy_timeout_s, md5, hashname)
            if stored is not None and digest is not None and digest != stored[1]:
                raise httpclient.CopyError(f"checksum mismatch copying {src}")
        except (httpclient.CopyError, *httpclient.HTTPError) as e:
            log.warning("copy fid %d %s -> %s failed: %s", fid, src, dst, e)
            store.release_stray(fid, devid)
            self.state.delete_wakeup.set()
            return False
        new_sum = (hashtype, digest) if stored is None and hashtype and digest else None
        store.add_copy(fid, devid, new_sum)
        return True
