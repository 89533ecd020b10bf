"""Replication and deletion workers against in-process storage nodes (reference C.5, D.6, D.8)."""

from __future__ import annotations

from services.core.children import wait_for
from tests.mogilefs.conftest import Mog, wait_copies
from tests.mogilefs.conftest import store_file as store


def hosts_of(mog: Mog, devids: str) -> set[int]:
    by_dev = {d: 1 if d in (1, 2) else 2 for d in (1, 2, 3, 4)}
    return {by_dev[int(d)] for d in devids.split(",") if d}


def test_mindevcount_2_reaches_two_hosts(mog: Mog) -> None:
    d = mog.new_domain()
    with mog.client() as c:
        for i in range(5):
            store(c, d, f"k{i}", b"x" * (i + 1) * 1000)
        for i in range(5):
            wait_copies(c, d, f"k{i}", 2)
            info = c.call("file_info", domain=d, key=f"k{i}", devices=1)
            assert hosts_of(mog, info["devids"]) == {1, 2}
            assert info["devcount"] == "2"
            paths = c.call("get_paths", domain=d, key=f"k{i}")
            assert paths["paths"] == "2"


def test_mindevcount_1_stays_single_and_updateclass_adds_copies(mog: Mog) -> None:
    d = mog.new_domain({"one": 1, "devs3": 3})
    with mog.client() as c:
        c.call("update_class", domain=d, **{"class": "devs3"}, mindevcount=3,
               replpolicy="MultipleDevices()")
        store(c, d, "single", b"one copy", cls="one")
        wait_for(lambda: "replqueue_fid" not in c.call("file_debug", domain=d, key="single"),
                 10, what="replication queue drained")
        wait_copies(c, d, "single", 1)
        c.call("updateclass", domain=d, key="single", **{"class": "devs3"})
        wait_copies(c, d, "single", 3)
        # Back to one copy: the replicator trims the extra two, and they leave the disks.
        fid = int(c.call("file_info", domain=d, key="single")["fid"])
        c.call("updateclass", domain=d, key="single", **{"class": "one"})
        wait_copies(c, d, "single", 1)
        wait_for(lambda: len([f for _d, f in mog.fid_files() if f == fid]) == 1, 10,
                 what="extra copies deleted")


def test_multiple_hosts_3_on_two_hosts_uses_every_host_and_three_devices(mog: Mog) -> None:
    d = mog.new_domain({"triple": 3})
    with mog.client() as c:
        store(c, d, "t", b"three", cls="triple")
        wait_copies(c, d, "t", 3)
        info = c.call("file_info", domain=d, key="t", devices=1)
        assert hosts_of(mog, info["devids"]) == {1, 2}
        assert c.call("get_paths", domain=d, key="t")["paths"] == "2"
        assert c.call("get_paths", domain=d, key="t", pathcount=3)["paths"] == "3"
        assert c.call("get_paths", domain=d, key="t", pathcount=1)["paths"] == "2"


def test_checksum_class_gets_checksum_from_replication(mog: Mog) -> None:
    import hashlib

    d = mog.new_domain()
    with mog.client() as c:
        c.call("create_class", domain=d, **{"class": "md5"}, mindevcount=2, hashtype="MD5")
        store(c, d, "h", b"hash me", cls="md5")
        wait_copies(c, d, "h", 2)
        assert c.call("file_info", domain=d, key="h")["checksum"] == \
            "MD5:" + hashlib.md5(b"hash me").hexdigest()


def test_delete_removes_every_copy(mog: Mog) -> None:
    d = mog.new_domain()
    with mog.client() as c:
        fid = store(c, d, "del", b"bye")
        wait_copies(c, d, "del", 2)
        assert {f for _dev, f in mog.fid_files()} >= {fid}
        c.call("delete", domain=d, key="del")
        wait_for(lambda: fid not in {f for _dev, f in mog.fid_files()}, 10,
                 what="copies deleted")
        assert mog.tracker.state.store.file_devids(fid) == []


def test_replicate_now_counts_deferred_rows(mog: Mog) -> None:
    store_ = mog.tracker.state.store
    d = mog.new_domain()
    with mog.client() as c:
        fid = store(c, d, "later", b"x")
        wait_copies(c, d, "later", 2)
        store_.queue_replication([fid])
        store_.retry_replication(fid, 2_000_000_000)
        assert int(c.call("replicate_now")["count"]) >= 1
        wait_for(lambda: store_.replication(fid) is None, 10, what="replication row done")
