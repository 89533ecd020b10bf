"""A one-call MogileFS for development and tests: a tracker and two storage nodes.

`DevCluster(data_dir).start()` starts, as child processes on free loopback ports (or the given
tracker port), two storage nodes with two devices each (host1: dev1, dev2; host2: dev3, dev4)
and a tracker whose SQLite database lives in `data_dir`; registers the hosts and devices,
creates the domain and its classes, and returns once every device is observed writeable.
Starting again on the same `data_dir` reuses the database and files (ports are updated).

Children run `python -m services.mogilefs <command>`; their logs go to `data_dir/*.log`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from services.core.children import Child, free_port, wait_for
from services.mogilefs.client import TrackerClient, TrackerError

#: Classes created in the dev domain: name → mindevcount.
DEV_CLASSES: Mapping[str, int] = {"default": 2, "single": 1, "triple": 3}
#: Tracker settings the dev cluster starts with (callers' `tracker_options` win). NORMAL in WAL
#: mode keeps every acknowledged change through a kill -9 of the tracker (not a power cut), at
#: about three times the store rate of FULL.
DEV_TRACKER_OPTIONS: Mapping[str, Any] = {"sqlite_synchronous": "NORMAL"}
#: Seconds to wait for every device to be observed writeable.
READY_TIMEOUT_S = 30.0
HOST = "127.0.0.1"


def _options(options: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in options.items():
        literal = f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) \
            else str(v)
        out += ["--option", f"{k}={literal}"]
    return out


class DevCluster:
    """Tracker + 2 storage nodes (2 devices each) + a domain with classes.

    `tracker_options` / `storage_options` set TrackerSpec / StorageSpec fields (e.g.
    `{"monitor_interval_s": 0.2}` in tests).
    """

    def __init__(self, data_dir: str, tracker_port: int = 0, domain: str = "glammp",
                 classes: Mapping[str, int] = DEV_CLASSES,
                 tracker_options: Mapping[str, Any] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.domain = domain
        self.classes = dict(classes)
        self.tracker_port = tracker_port or free_port(HOST)
        self.tracker_options = {**DEV_TRACKER_OPTIONS, **(tracker_options or {})}
        self.storage_options = dict(storage_options or {})
        os.makedirs(data_dir, exist_ok=True)
        self.storage: list[Child] = []
        self.devices: dict[str, list[int]] = {"host1": [1, 2], "host2": [3, 4]}
        for name, devids in self.devices.items():
            port = free_port(HOST)
            argv = [sys.executable, "-m", "services.mogilefs", "mogstored", "--host", HOST,
                    "--port", str(port), "--docroot", self.docroot(name),
                    *[a for d in devids for a in ("--device", str(d))],
                    *_options(self.storage_options)]
            self.storage.append(Child(f"mogstored-{name}", argv, HOST, port,
                                      os.path.join(data_dir, f"mogstored-{name}.log")))
        argv = [sys.executable, "-m", "services.mogilefs", "mogilefsd", "--host", HOST,
                "--port", str(self.tracker_port),
                "--db-path", os.path.join(data_dir, "tracker.sqlite3"),
                *_options(self.tracker_options)]
        self.tracker = Child("mogilefsd", argv, HOST, self.tracker_port,
                             os.path.join(data_dir, "mogilefsd.log"))

    @property
    def trackers(self) -> list[str]:
        """`host:port` of the tracker, the form MogileFS clients take."""
        return [f"{HOST}:{self.tracker_port}"]

    def docroot(self, hostname: str) -> str:
        return os.path.join(self.data_dir, hostname)

    def client(self) -> TrackerClient:
        return TrackerClient(HOST, self.tracker_port)

    def start(self) -> DevCluster:
        """Starts everything (stopping what started if a step fails) and waits until ready."""
        try:
            for child in self.storage:
                child.start()
            self.tracker.start()
            self.configure()
        except BaseException:
            self.stop()
            raise
        return self

    def configure(self) -> None:
        """Registers hosts/devices and creates the domain and classes (idempotent)."""
        with self.client() as c:
            for (name, devids), node in zip(self.devices.items(), self.storage, strict=True):
                try:
                    c.call("create_host", host=name, ip=HOST, port=node.port, status="alive")
                except TrackerError as e:
                    if e.code != "host_exists":
                        raise
                    c.call("update_host", host=name, ip=HOST, port=node.port, status="alive")
                for devid in devids:
                    try:
                        c.call("create_device", devid=devid, hostname=name, state="alive")
                    except TrackerError as e:
                        if e.code != "existing_devid":
                            raise
            try:
                c.call("create_domain", domain=self.domain)
            except TrackerError as e:
                if e.code != "domain_exists":
                    raise
            for name, mindevcount in self.classes.items():
                try:
                    c.call("create_class", domain=self.domain, **{"class": name},
                           mindevcount=mindevcount)
                except TrackerError as e:
                    if e.code != "class_exists":
                        raise
            self.wait_writeable(c)

    def wait_writeable(self, c: TrackerClient, timeout_s: float = READY_TIMEOUT_S) -> None:
        want = sum(len(d) for d in self.devices.values())

        def ready() -> bool:
            reply = c.call("get_devices")
            states = [v for k, v in reply.items() if k.endswith("_observed_state")]
            return states.count("writeable") >= want

        wait_for(ready, timeout_s, interval_s=0.05, what="all dev cluster devices writeable")

    def stop(self) -> None:
        """Stops the tracker, then the storage nodes (SIGTERM, then SIGKILL if need be)."""
        self.tracker.stop()
        for child in self.storage:
            child.stop()
