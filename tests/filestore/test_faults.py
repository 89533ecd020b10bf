"""Real faults: a storage node stopped, a tracker stopped, a copy corrupted on disk, a PUT
refused."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import gevent
import pytest
from gevent.server import StreamServer

from glammp.base.ttypes import Status
from glammp.common.ttypes import ServiceError
from glammp.filestore.ttypes import FetchOptions, PathOptions, StoreOptions
from services.cache.service import PoolConfig
from services.core.children import Child, wait_for
from services.filestore.storage import StorageFailure
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import MD5_CLASS, Store


def _key(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex}"


def _on_disk(cluster: DevCluster, url: str) -> str:
    """The file behind a storage URL in the dev cluster's docroots."""
    path = urlsplit(url).path
    devid = int(path.split("/")[1][3:])
    host = next(h for h, devs in cluster.devices.items() if devid in devs)
    return os.path.join(cluster.docroot(host), path.lstrip("/"))


def _copies(fs: Store, key: str, want: int) -> list[str]:
    wait_for(lambda: len(fs.handler.info("", key).devids) >= want, 30, what=f"{want} copies")
    return fs.handler.get_paths("", key, PathOptions(noverify=True, pathcount=want))


class TrackerProxy:
    """A TCP relay standing in for one more tracker; `stop()` makes it a dead tracker."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.accepted = 0
        self.open: set[socket.socket] = set()
        self.server = StreamServer(("127.0.0.1", 0), self._relay)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def _relay(self, client: socket.socket, _: Any) -> None:
        self.accepted += 1
        upstream = socket.create_connection(self.target, timeout=10)
        self.open.update((client, upstream))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    s.close()
                    self.open.discard(s)

        back = gevent.spawn(pipe, upstream, client)
        pipe(client, upstream)
        back.join()

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for s in list(self.open):
            s.close()
        self.open.clear()


def test_fetch_from_the_replica_when_a_storage_node_is_stopped(
        filestore: Callable[..., Store], own_mogilefs: DevCluster, memcached: Child) -> None:
    cluster = own_mogilefs
    fs = filestore(cluster, path_cache=PoolConfig(servers=[memcached.address]))
    files = {_key(f"replica-{i}"): os.urandom(2000 + i) for i in range(4)}
    with fs.client() as c:
        for key, data in files.items():
            c.store("", key, data, None)
        for key in files:
            _copies(fs, key, 2)
            c.fetch("", key, None)  # caches paths that include the node about to stop
        cluster.storage[0].stop()
        for _ in range(3):
            for key, data in files.items():
                assert c.fetch("", key, None) == data
                assert c.fetch_range("", key, 10, 20) == data[10:30]
        # get_paths without noverify checks the first cached path and skips the dead node.
        for key in files:
            first = c.get_paths("", key, None)[0]
            assert f":{cluster.storage[0].port}/" not in first


def test_a_refused_put_is_retried_on_another_device(
        filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs)
    refused: list[str] = []
    inner = fs.handler.storage.put

    def put(url: str, data: bytes, content_md5: str | None = None) -> None:
        if not refused:
            refused.append(url)
            raise StorageFailure(url, "PUT answered 500")
        inner(url, data, content_md5)

    fs.handler.storage.put = put  # type: ignore[method-assign]
    key = _key("retry-put")
    info = fs.handler.store("", key, b"second device", None)
    assert len(refused) == 1
    stored_at = fs.handler.get_paths("", key, PathOptions(noverify=True, pathcount=3))
    assert refused[0] not in stored_at and f"/{info.fid:010d}.fid" in stored_at[0]
    assert fs.handler.fetch("", key, None) == b"second device"


def test_a_fid_whose_every_destination_refused_is_discarded(
        filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs)
    refused_fid: list[str] = []
    inner = fs.handler.storage.put

    def put(url: str, data: bytes, content_md5: str | None = None) -> None:
        fid = url.rsplit("/", 1)[1]
        if not refused_fid or refused_fid[0] == fid:
            refused_fid[:1] = [fid]
            raise StorageFailure(url, "PUT answered 507")
        inner(url, data, content_md5)

    fs.handler.storage.put = put  # type: ignore[method-assign]
    info = fs.handler.store("", _key("second-fid"), b"on a new fid", None)
    first = int(refused_fid[0].split(".")[0])
    assert info.fid != first
    with mogilefs.client() as t:
        # create_close without a key consumed the first fid's tempfile row.
        assert not any(k.startswith("tempfile_") for k in t.call("file_debug", fid=first))


def test_calls_continue_when_one_of_two_trackers_stops(
        filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    a, b = TrackerProxy(mogilefs.trackers[0]), TrackerProxy(mogilefs.trackers[0])
    try:
        fs = filestore(mogilefs, trackers=[a.address, b.address], tracker_retry_dead_ms=60_000)
        with fs.client() as c:
            for i in range(6):
                c.store("", f"two-trackers/{i}", b"x" * i, None)
            assert a.accepted >= 1 and b.accepted >= 1  # requests spread over both
            a.stop()
            for i in range(20):
                key = _key(f"after-stop-{i}")
                c.store("", key, b"still here", None)
                assert c.fetch("", key, None) == b"still here"
                assert c.info("", key).length == 10
            status, details = fs.handler.health()
            assert status == Status.WARNING and a.address in details
            b.stop()
            with pytest.raises(ServiceError) as e:
                c.info("", "two-trackers/1")
            assert e.value.code == 503 and e.value.retryable
    finally:
        a.stop()
        b.stop()


def test_a_corrupted_copy_is_detected_when_verifying(
        filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs)
    data = os.urandom(50_000)
    key = _key("corrupt")
    with fs.client() as c:
        c.store("", key, data, StoreOptions(storage_class=MD5_CLASS))
        paths = _copies(fs, key, 2)
        bad = bytearray(data)
        bad[1000:1010] = bytes(10)
        with open(_on_disk(mogilefs, paths[0]), "r+b") as f:
            f.write(bad)
        # One copy is bad: verified reads always return the good one.
        for _ in range(6):
            assert c.fetch("", key, FetchOptions(verify=True)) == data
        with open(_on_disk(mogilefs, paths[1]), "r+b") as f:
            f.write(bad)
        # Both bad: unverified reads return the damage, verified ones refuse it.
        assert c.fetch("", key, FetchOptions(verify=False)) == bytes(bad)
        with pytest.raises(ServiceError) as e:
            c.fetch("", key, FetchOptions(verify=True))
        assert e.value.code == 1002
        # A class without a hashtype has nothing to verify against.
        plain = _key("plain")
        c.store("", plain, b"no checksum", None)
        with pytest.raises(ServiceError) as e:
            c.fetch("", plain, FetchOptions(verify=True))
        assert e.value.code == 412


def test_an_upload_session_starts_on_the_next_device_when_the_first_refuses(
        filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs)
    refused: list[str] = []
    inner = fs.handler.storage.connect

    def connect(url: str, host: str, port: int) -> Any:
        if not refused:
            refused.append(url)
            raise StorageFailure(url, "connect failed: refused")
        return inner(url, host, port)

    fs.handler.storage.connect = connect  # type: ignore[method-assign]
    key = _key("session-retry")
    with fs.client() as c:
        up = c.begin_upload("", key, None)
        assert fs.handler.uploads.sessions[up.upload_id].path != refused[0]
        c.append_chunk(up.upload_id, 0, b"on another device")
        c.finish_upload(up.upload_id, None)
        assert c.fetch("", key, None) == b"on another device"


def test_a_storage_node_lost_mid_upload_fails_the_session(
        filestore: Callable[..., Store], own_mogilefs: DevCluster) -> None:
    cluster = own_mogilefs
    fs = filestore(cluster)
    key = _key("lost-node")
    chunk = os.urandom(1 << 20)
    with fs.client() as c:
        up = c.begin_upload("", key, None)
        offset = c.append_chunk(up.upload_id, 0, chunk)
        port = urlsplit(fs.handler.uploads.sessions[up.upload_id].path).port
        next(n for n in cluster.storage if n.port == port).kill9()
        failure = None
        for _ in range(50):  # the first writes may still fit in socket buffers
            try:
                offset = c.append_chunk(up.upload_id, offset, chunk)
            except ServiceError as err:
                failure = err
                break
        assert failure is not None and failure.code == 502
        with pytest.raises(ServiceError) as again:
            c.append_chunk(up.upload_id, offset, chunk)
        assert again.value.code == 409
        c.abort_upload(up.upload_id)
        assert c.exists("", key) is False


def test_a_restarted_tracker_is_used_again(filestore: Callable[..., Store],
                                           own_mogilefs: DevCluster) -> None:
    cluster = own_mogilefs
    fs = filestore(cluster)
    key = _key("tracker-restart")
    with fs.client() as c:
        c.store("", key, b"survives", None)
        cluster.tracker.kill9()
        with pytest.raises(ServiceError) as e:
            c.info("", key)
        assert e.value.code == 503 and e.value.retryable
        assert fs.handler.health()[0] == Status.DEAD
        cluster.tracker.start()
        assert c.info("", key).length == len(b"survives")
        assert c.fetch("", key, None) == b"survives"
        assert fs.handler.health()[0] == Status.ALIVE
