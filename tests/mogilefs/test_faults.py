"""Faults with real processes (DevCluster): dead devices, a stopped storage node, kill -9 of
the tracker mid-upload and mid-replication, and no orphaned copies afterwards."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
from urllib.parse import urlsplit

from services.core.children import wait_for
from services.mogilefs.devcluster import DevCluster
from tests.mogilefs.conftest import store_file as store
from tests.mogilefs.conftest import wait_copies, web


def db(cluster: DevCluster) -> sqlite3.Connection:
    path = os.path.join(cluster.data_dir, "tracker.sqlite3")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def disk_copies(cluster: DevCluster) -> set[tuple[int, int]]:
    out = set()
    for host in cluster.devices:
        root = cluster.docroot(host)
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                if f.endswith(".fid"):
                    dev = os.path.relpath(dirpath, root).split(os.sep)[0]
                    out.add((int(dev[3:]), int(f[:-4])))
    return out


def temp_files(cluster: DevCluster) -> list[str]:
    return [f for host in cluster.devices for _d, _s, files in os.walk(cluster.docroot(host))
            for f in files if f.endswith(".tmp")]


def no_orphans(cluster: DevCluster) -> bool:
    with db(cluster) as conn:
        known = {(d, f) for f, d in conn.execute("SELECT fid, devid FROM file_on")}
        strays = conn.execute("SELECT count(*) FROM stray_copy").fetchone()[0]
        temps = conn.execute("SELECT count(*) FROM tempfile").fetchone()[0]
    return disk_copies(cluster) == known and strays == 0 and temps == 0 and \
        not temp_files(cluster)


def test_dead_device_files_are_rereplicated(dev_cluster: DevCluster) -> None:
    d = dev_cluster.domain
    with dev_cluster.client() as c:
        keys = [f"dd{i}" for i in range(8)]
        for k in keys:
            store(c, d, k, k.encode() * 100)
        for k in keys:
            wait_copies(c, d, k, 2)
        on_dev1 = [k for k in keys
                   if "1" in c.call("file_info", domain=d, key=k, devices=1)["devids"].split(",")]
        c.call("set_state", host="host1", device=1, state="dead")
        for k in keys:
            p = c.call("get_paths", domain=d, key=k, noverify=1)
            assert "/dev1/" not in p.get("path1", "") + p.get("path2", "")

        def healed() -> bool:
            for k in keys:
                devids = c.call("file_info", domain=d, key=k, devices=1)["devids"].split(",")
                hosts = {1 if x in ("1", "2") else 2 for x in devids}
                if "1" in devids or len(devids) != 2 or hosts != {1, 2}:
                    return False
            return True

        wait_for(healed, 30, interval_s=0.1, what="files re-replicated off dead dev1")
        for k in on_dev1:
            p = c.call("get_paths", domain=d, key=k)
            assert web("GET", p["path1"]) == (200, k.encode() * 100)


def test_stopped_storage_node_still_leaves_a_working_path(dev_cluster: DevCluster) -> None:
    d = dev_cluster.domain
    with dev_cluster.client() as c:
        keys = [f"sn{i}" for i in range(10)]
        for k in keys:
            store(c, d, k, k.encode())
        for k in keys:
            wait_copies(c, d, k, 2)
        dev_cluster.storage[0].stop()
        for k in keys:
            p = c.call("get_paths", domain=d, key=k)
            assert int(p["paths"]) >= 1
            assert web("GET", p["path1"]) == (200, k.encode())
        # New files still go somewhere once the monitor has seen the node go.
        wait_for(lambda: c.call("get_devices", devid=1)["dev1_observed_state"] == "unreachable",
                 15, what="host1 unreachable")
        store(c, d, "after", b"after")
        p = c.call("get_paths", domain=d, key="after")
        assert web("GET", p["path1"]) == (200, b"after")


def test_hung_storage_node_still_leaves_a_working_path(dev_cluster: DevCluster) -> None:
    """A frozen node (SIGSTOP) accepts connections but never answers: get_paths' check of the
    first path times out and the next copy is offered instead."""
    d = dev_cluster.domain
    with dev_cluster.client() as c:
        keys = [f"hung{i}" for i in range(5)]
        for k in keys:
            store(c, d, k, k.encode())
        for k in keys:
            wait_copies(c, d, k, 2)
        frozen = dev_cluster.storage[0]
        frozen.signal(signal.SIGSTOP)
        try:
            for k in keys:
                p = c.call("get_paths", domain=d, key=k)
                # Like MogileFS, only the first path is checked: the frozen copy may follow.
                assert p["paths"] in ("1", "2")
                assert urlsplit(p["path1"]).port != frozen.port
                assert web("GET", p["path1"]) == (200, k.encode())
        finally:
            frozen.signal(signal.SIGCONT)


def test_kill9_mid_upload_and_mid_replication(tmp_path: object) -> None:
    from tests.mogilefs.conftest import FAST

    options = {**FAST, "tempfile_max_age_s": 1.0, "sqlite_synchronous": "FULL"}
    cluster = DevCluster(os.path.join(str(tmp_path), "mog"), tracker_options=options,
                         storage_options={"usage_interval_s": 0.5})
    cluster.start()
    try:
        d = cluster.domain
        host1, host2 = cluster.storage
        with cluster.client() as c:
            acked = {f"ack{i}": os.urandom(2000 + i) for i in range(10)}
            for k, v in acked.items():
                store(c, d, k, v)
            # An upload never closed, and one cut off mid-body.
            o = c.call("create_open", domain=d, key="unclosed")
            assert web("PUT", o["path"], b"never closed")[0] == 200
            o2 = c.call("create_open", domain=d, key="partial")
            parts = urlsplit(o2["path"])
            half = socket.create_connection((parts.hostname, parts.port))
            half.sendall(f"PUT {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000"
                         f"\r\n\r\n".encode() + b"p" * 5000)
            # Mid-replication: host2 frozen, so the copy of a new file to it hangs in flight.
            big = os.urandom(8 * 1024 * 1024)
            host2.signal(signal.SIGSTOP)
            try:
                store(c, d, "inflight", big, port=host1.port)

                def copying() -> bool:
                    with db(cluster) as conn:
                        return conn.execute("SELECT count(*) FROM stray_copy "
                                            "WHERE nexttry > 0").fetchone()[0] > 0

                wait_for(copying, 10, what="a replication copy in flight")
                cluster.tracker.kill9()
            finally:
                host2.signal(signal.SIGCONT)
                half.close()
        cluster.tracker.start()
        with cluster.client() as c:
            cluster.wait_writeable(c)
            for k, v in {**acked, "inflight": big}.items():
                wait_copies(c, d, k, 2)
                p = c.call("get_paths", domain=d, key=k)
                assert web("GET", p["path1"]) == (200, v)
                assert web("GET", p["path2"]) == (200, v)
            for k in ("unclosed", "partial"):
                try:
                    c.call("get_paths", domain=d, key=k)
                    raise AssertionError(f"{k} became visible")
                except Exception as e:  # noqa: BLE001
                    assert getattr(e, "code", "") == "unknown_key"
            c.call("delete", domain=d, key="ack0")
            wait_for(lambda: no_orphans(cluster), 30, interval_s=0.1,
                     what="no orphaned copies on disk")
    finally:
        cluster.stop()
