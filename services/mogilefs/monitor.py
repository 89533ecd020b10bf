"""The device monitor: reads each device's usage file and test-writes to it.

Every `monitor_interval_s` seconds, for each device that is not dead on a host that is not dead:

* `GET /devN/usage` (get port). Its `total`/`used` (KiB) become the device's mb_total/mb_used,
  written to the database when they change or every `usage_store_interval_s`. A failed GET marks
  the device `unreachable`.
* Every `test_write_interval_s` (and on a forced round): `PUT /devN/test-write/test-write-<n>`,
  then GET it back. Both fine → `writeable`; otherwise `readable`. Once per device, a PUT with a
  deliberately wrong Content-MD5 finds out whether the node rejects bad checksums.

It also runs the dead-device reaper: copies on devices marked dead are forgotten and their files
queued for replication, in batches, so files regain their policy from the surviving copies.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import time

import gevent
import gevent.event
import gevent.lock
import gevent.pool

from services.mogilefs import httpclient
from services.mogilefs.devices import Device
from services.mogilefs.state import TrackerState

log = logging.getLogger(__name__)

#: Copies forgotten per dead device per round.
REAP_BATCH = 1000


class Monitor:
    """Keeps `Topology.observed` current; `run_round()` forces a round and waits for it."""

    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.spec = state.spec
        self._last_test: dict[int, float] = {}
        self._last_store: dict[int, float] = {}
        self._md5_tested: set[int] = set()
        self._round_lock = gevent.lock.Semaphore()
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        """Starts the loop; its first round runs at once, without delaying the caller."""
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()

    def _run(self) -> None:
        while True:
            try:
                self._round(None, force_test=False)
                self._reap()
            except Exception:
                log.exception("monitor round failed")
            gevent.sleep(self.spec.monitor_interval_s)

    def run_round(self, devids: list[int] | None) -> None:
        """One full round now (test writes included) for `devids` (None: all devices)."""
        self._round(devids, force_test=True)
        self._reap()

    def _round(self, devids: list[int] | None, force_test: bool) -> None:
        with self._round_lock:
            devices = [d for d in self.state.topology.snapshot().values()
                       if d.status != "dead" and d.host_status != "dead"
                       and (devids is None or d.devid in devids)]
            pool = gevent.pool.Pool(16)
            for d in devices:
                pool.spawn(self._check, d, force_test)
            pool.join(timeout=self.spec.http_timeout_s * 3)
            pool.kill()

    def _check(self, dev: Device, force_test: bool) -> None:
        obs = dev.observed
        base = dev.base_url(get=True)
        timeout = self.spec.http_timeout_s
        try:
            status, _, body = httpclient.request("GET", f"{base}/dev{dev.devid}/usage", timeout)
        except httpclient.HTTPError:
            obs.state = "unreachable"
            return
        if status == 200:
            self._store_usage(dev, body)
        elif obs.state == "unreachable":
            obs.state = ""
        now = time.monotonic()
        if not force_test and obs.state not in ("", "unreachable") and \
                now - self._last_test.get(dev.devid, 0.0) < self.spec.test_write_interval_s:
            return
        self._last_test[dev.devid] = now
        obs.state = "writeable" if self._test_write(dev) else "readable"
        if dev.devid not in self._md5_tested and obs.state == "writeable":
            obs.reject_bad_md5 = self._rejects_bad_md5(dev)
            self._md5_tested.add(dev.devid)

    def _store_usage(self, dev: Device, body: bytes) -> None:
        fields: dict[str, str] = {}
        for line in body.decode("utf-8", "replace").splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip()] = v.strip()
        try:
            total_mb = int(fields["total"]) // 1024
            used_mb = int(fields["used"]) // 1024
        except (KeyError, ValueError):
            return
        if not total_mb:
            return
        now = time.monotonic()
        changed = (total_mb, used_mb) != (dev.mb_total, dev.mb_used)
        if changed or now - self._last_store.get(dev.devid, 0.0) >= \
                self.spec.usage_store_interval_s:
            self.state.store.update_device(dev.devid, mb_total=total_mb, mb_used=used_mb,
                                           mb_asof=int(time.time()))
            self._last_store[dev.devid] = now

    def _test_write(self, dev: Device) -> bool:
        url = f"{dev.base_url()}/dev{dev.devid}/test-write/test-write-{random.randrange(100)}"
        content = f"time={int(time.time())} rand={random.randrange(1 << 30)}".encode()
        timeout = self.spec.http_timeout_s
        try:
            status, _, _ = httpclient.request("PUT", url, timeout, body=content)
            if status // 100 != 2:
                return False
            get_url = url.replace(dev.base_url(), dev.base_url(get=True), 1)
            status, _, body = httpclient.request("GET", get_url, timeout)
            return status == 200 and body == content
        except httpclient.HTTPError:
            return False

    def _rejects_bad_md5(self, dev: Device) -> bool:
        url = f"{dev.base_url()}/dev{dev.devid}/test-write/test-md5"
        wrong = base64.b64encode(hashlib.md5(b"not the body").digest()).decode()
        try:
            status, _, _ = httpclient.request("PUT", url, self.spec.http_timeout_s,
                                              body=b"test-md5", headers={"Content-MD5": wrong})
        except httpclient.HTTPError:
            return False
        return status // 100 != 2

    def _reap(self) -> None:
        dead = [d.devid for d in self.state.topology.snapshot().values() if d.status == "dead"]
        if not dead:
            return
        for devid in self.state.store.devices_with_copies(dead):
            fids = self.state.store.reap_device(devid, REAP_BATCH)
            if fids:
                log.info("reaped %d copies from dead device %d", len(fids), devid)
                self.state.replicate_wakeup.set()
