"""Fixtures for the MogileFS tests.

`mog` is an in-process tracker with two in-process storage nodes (two devices each) on
127.0.0.1 port 0, shared by a test module, with workers running every 0.1–0.2 s.
`dev_cluster` is the real thing as child processes (`DevCluster`), for kill -9 and restart.
"""

from __future__ import annotations

import http.client
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.core.children import wait_for
from services.mogilefs import wire
from services.mogilefs.client import TrackerClient
from services.mogilefs.config import StorageSpec, TrackerSpec
from services.mogilefs.devcluster import DevCluster
from services.mogilefs.storage import StorageNode
from services.mogilefs.tracker import Tracker
from tests.mogilefs.postgres import PostgresServer
from tests.mogilefs.postgres import available as pg_available

#: Worker settings that make tests fast: rounds every 0.1–0.2 s, back-off ×0.01.
FAST: dict[str, Any] = {
    "monitor_interval_s": 0.2, "test_write_interval_s": 0.5, "usage_store_interval_s": 0.5,
    "replicate_interval_s": 0.1, "delete_interval_s": 0.1, "retry_scale": 0.001,
    "min_free_space_mb": 1, "http_timeout_s": 3.0, "verify_timeout_s": 0.5,
    "copy_timeout_s": 10.0,
    "sqlite_synchronous": "NORMAL",
}


class Session:
    """A raw tracker connection: `line(b"noop")` sends one request and returns the reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        return self.reader.readline()

    def line(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode()
        self.send(data + b"\r\n")
        return self.reply()

    def ok(self, data: bytes | str) -> dict[str, bytes]:
        """Sends a request that must succeed; returns its decoded arguments."""
        reply = self.line(data)
        good, args = wire.decode_reply(reply)
        assert good, reply
        return args  # type: ignore[return-value]

    def err(self, data: bytes | str) -> str:
        """Sends a request that must fail; returns its error code."""
        reply = self.line(data)
        good, info = wire.decode_reply(reply)
        assert not good and isinstance(info, tuple), reply
        return info[0]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class Mog:
    tracker: Tracker
    nodes: list[StorageNode]
    domain: str
    sessions: list[Session] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.tracker.port

    def session(self) -> Session:
        s = Session(self.port)
        self.sessions.append(s)
        return s

    def client(self) -> TrackerClient:
        return TrackerClient("127.0.0.1", self.port)

    def new_domain(self, classes: dict[str, int] | None = None) -> str:
        name = f"d{uuid.uuid4().hex[:8]}"
        with self.client() as c:
            c.call("create_domain", domain=name)
            for cls, mindev in (classes or {}).items():
                c.call("create_class", domain=name, **{"class": cls}, mindevcount=mindev)
        return name

    def fid_files(self) -> set[tuple[int, int]]:
        """(devid, fid) of every .fid file on every node's disk."""
        out: set[tuple[int, int]] = set()
        for node in self.nodes:
            for root, _dirs, files in os.walk(node.docroot):
                for f in files:
                    if f.endswith(".fid"):
                        devid = int(os.path.relpath(root, node.docroot).split(os.sep)[0][3:])
                        out.add((devid, int(f[:-4])))
        return out


def register(c: TrackerClient, nodes: list[StorageNode]) -> None:
    """Registers each node as host<i> with its devN directories as alive devices."""
    for i, node in enumerate(nodes, 1):
        c.call("create_host", host=f"host{i}", ip="127.0.0.1", port=node.port, status="alive")
        for devid in node.spec.devices:
            c.call("create_device", devid=devid, hostname=f"host{i}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (skips the test when it cannot run here)."""
    reason = pg_available()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh tracker database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "tracker.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def mog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mog]:
    """The in-process tracker, once per module for each metadata database."""
    tmp = tmp_path_factory.mktemp("mog")
    if request.param == "sqlite":
        db = str(tmp / "tracker.sqlite3")
    else:
        db = request.getfixturevalue("postgres").new_database()
    nodes = []
    for i, devs in enumerate(([1, 2], [3, 4]), 1):
        node = StorageNode(StorageSpec(port=0, docroot=str(tmp / f"host{i}"), devices=devs,
                                       usage_interval_s=0.5))
        node.start()
        nodes.append(node)
    tracker = Tracker(TrackerSpec(port=0, db_path=db, **FAST))
    tracker.start()
    with TrackerClient("127.0.0.1", tracker.port) as c:
        register(c, nodes)
        c.call("create_domain", domain="testdom")
        c.call("create_class", domain="testdom", **{"class": "one"}, mindevcount=1)
    m = Mog(tracker, nodes, "testdom")
    try:
        yield m
    finally:
        for s in m.sessions:
            s.close()
        tracker.stop()
        for node in nodes:
            node.stop()


@pytest.fixture
def dev_cluster(tmp_path: Any) -> Iterator[DevCluster]:
    cluster = DevCluster(str(tmp_path / "mog"), tracker_options=FAST,
                         storage_options={"usage_interval_s": 0.5})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_copies(c: TrackerClient, domain: str, key: str, n: int, timeout_s: float = 20) -> None:
    """Waits until `key` has exactly `n` locations (file_info devids)."""
    def done() -> bool:
        devids = c.call("file_info", domain=domain, key=key, devices=1)["devids"]
        return len([d for d in devids.split(",") if d]) == n

    wait_for(done, timeout_s, interval_s=0.05, what=f"{key} on {n} devices")


def web(method: str, url: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request to a storage URL; returns (status, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    try:
        conn.request(method, parts.path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def store_file(c: TrackerClient, domain: str, key: str, data: bytes, cls: str = "",
               port: int | None = None) -> int:
    """create_open (multi_dest) + PUT + create_close; returns the fid.

    With `port`, uploads to the offered path on that storage node.
    """
    extra = {"class": cls} if cls else {}
    o = c.call("create_open", domain=domain, key=key, fid=0, multi_dest=1, **extra)
    i = next(i for i in range(1, int(o["dev_count"]) + 1)
             if port is None or urlsplit(o[f"path_{i}"]).port == port)
    status, _ = web("PUT", o[f"path_{i}"], data)
    assert status // 100 == 2, status
    c.call("create_close", domain=domain, key=key, fid=o["fid"], devid=o[f"devid_{i}"],
           path=o[f"path_{i}"], size=len(data))
    return int(o["fid"])
