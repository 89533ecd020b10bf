"""The deleter: removes replicas of deleted files, stray copies, and abandoned uploads.

Every `delete_interval_s` (or at once when woken by delete/create_close):

* `file_to_delete2`: for each due fid, DELETE every copy in `file_on`. 2xx or 404 forgets the
  copy; copies on dead or unknown devices are just forgotten. A device that cannot take a
  delete now is retried later, as MogileFS does: not observed writeable → (10 + failcount) min;
  down/readonly/host not alive → (1 + failcount) h; HTTP failure → 30 × (1 + failcount) min
  (all × `retry_scale`). When no copy is left the fid leaves the queue.
* `stray_copy`: copies that exist on a device without a `file_on` row (unused multi_dest
  destinations, failed closes, copies in flight at a crash). Each is deleted unless `file_on`
  claims it by then.
* Tempfile rows older than `tempfile_max_age_s` are abandoned: their devices' copies become
  strays.

Every fid is handled under its fid lock; a fid the replicator holds is skipped for this pass.
"""

from __future__ import annotations

import logging
import time

import gevent

from services.mogilefs import httpclient
from services.mogilefs.devices import Device
from services.mogilefs.state import TrackerState

log = logging.getLogger(__name__)

POLL_BATCH = 500


class Deleter:
    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.spec = state.spec
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()

    def _run(self) -> None:
        while True:
            self.state.delete_wakeup.wait(self.spec.delete_interval_s)
            self.state.delete_wakeup.clear()
            try:
                self.run_once()
            except Exception:
                log.exception("delete pass failed")

    def run_once(self) -> None:
        store = self.state.store
        swept = store.sweep_tempfiles(time.time() - self.spec.tempfile_max_age_s)
        if swept:
            log.info("abandoned %d uploads never closed", swept)
        now = time.time()
        for row in store.due_deletions(now, POLL_BATCH):
            self._locked(row["fid"], lambda fid=row["fid"], fc=row["failcount"]:
                         self._delete_file(fid, fc))
        for row in store.due_strays(now, POLL_BATCH):
            self._locked(row["fid"], lambda r=row: self._delete_stray(r["fid"], r["devid"],
                                                                      r["failcount"]))

    def _locked(self, fid: int, work: object) -> None:
        if not self.state.lock(fid):
            return
        try:
            work()  # type: ignore[operator]
        finally:
            self.state.unlock(fid)

    def _delete_file(self, fid: int, failcount: int) -> None:
        store = self.state.store
        devs = self.state.topology.snapshot()
        retry: float | None = None
        for devid in store.file_devids(fid):
            when = self._delete_copy(fid, devs.get(devid), failcount)
            if when is None:
                store.forget_copy(fid, devid)
            else:
                retry = when if retry is None else min(retry, when)
        if retry is None:
            store.deletion_done(fid)
        else:
            store.retry_deletion(fid, retry)

    def _delete_stray(self, fid: int, devid: int, failcount: int) -> None:
        store = self.state.store
        if store.stray_claimed(fid, devid):
            store.stray_done(fid, devid)
            return
        when = self._delete_copy(fid, self.state.topology.snapshot().get(devid), failcount)
        if when is None:
            store.stray_done(fid, devid)
        else:
            store.retry_stray(fid, devid, when)

    def _delete_copy(self, fid: int, dev: Device | None, failcount: int) -> float | None:
        """Deletes one copy; None when it is gone, else when (unix s) to try again."""
        if dev is None or dev.status == "dead" or dev.host_status == "dead":
            return None
        if dev.status not in ("alive", "drain") or dev.host_status != "alive":
            return self.state.retry_in(3600 * (1 + failcount))
        if dev.observed.state != "writeable":
            return self.state.retry_in(60 * (10 + failcount))
        url = dev.url(fid)
        try:
            status = httpclient.delete(url, self.spec.http_timeout_s)
        except httpclient.HTTPError as e:
            log.warning("DELETE %s failed: %s", url, e)
            return self.state.retry_in(1800 * (1 + failcount))
        if status // 100 == 2 or status == 404:
            return None
        log.warning("DELETE %s answered %d", url, status)
        return self.state.retry_in(1800 * (1 + failcount))
