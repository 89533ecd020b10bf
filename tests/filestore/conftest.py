"""Fixtures for the filestore tests: a real dev MogileFS, memcached, and a served handler.

`mogilefs` is glammp's tracker and two storage nodes as child processes (DevCluster), shared by
the whole test session; tests that stop a node use `own_mogilefs`, a cluster of their own.
`filestore(cluster, **config)` builds a handler on that cluster, serves it in-process, and
returns a `Store` with the handler and a Thrift client factory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import glammp.filestore.Filestore
from services.cache.local import start_local_memcached
from services.client import connect
from services.core.children import Child, free_port
from services.core.dispatch import Mount
from services.filestore import service
from services.filestore.service import FilestoreConfig, FilestoreHandler
from services.mogilefs.devcluster import DevCluster

#: Tracker settings that make background work (replication, deletion) quick in tests.
FAST: dict[str, Any] = {
    "monitor_interval_s": 0.2, "test_write_interval_s": 0.5, "usage_store_interval_s": 0.5,
    "replicate_interval_s": 0.1, "delete_interval_s": 0.1, "retry_scale": 0.001,
    "min_free_space_mb": 1, "http_timeout_s": 5.0, "copy_timeout_s": 60.0,
    "sqlite_synchronous": "NORMAL",
}
#: A class whose files carry an MD5 the tracker checks (created by the fixture).
MD5_CLASS = "md5"


def start_cluster(data_dir: str) -> DevCluster:
    cluster = DevCluster(data_dir, tracker_options=FAST).start()
    with cluster.client() as c:
        with contextlib.suppress(Exception):
            c.call("create_class", domain=cluster.domain, mindevcount=2, hashtype="MD5",
                   **{"class": MD5_CLASS})
    return cluster


@pytest.fixture(scope="session")
def mogilefs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = start_cluster(str(tmp_path_factory.mktemp("mogilefs")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_mogilefs(tmp_path: Any) -> Iterator[DevCluster]:
    cluster = start_cluster(os.path.join(str(tmp_path), "mogilefs"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    port = free_port()
    child = start_local_memcached(port, log_path=str(tmp_path_factory.mktemp("mc") / "log"))
    try:
        yield child
    finally:
        child.stop()


@dataclass
class Store:
    """A served filestore handler: `client()` opens a Thrift client to it."""

    handler: FilestoreHandler
    host: str
    port: int
    proc: Any = None  # the in-process server (`proc.stop()` ends it)

    def client(self, timeout_s: float = 120.0) -> contextlib.AbstractContextManager[Any]:
        return connect(self.host, self.port, "Filestore", timeout_s)


@pytest.fixture
def filestore(serve: Callable[..., Any]) -> Iterator[Callable[..., Store]]:
    handlers: list[FilestoreHandler] = []

    def start(cluster: DevCluster, **config: Any) -> Store:
        config.setdefault("trackers", cluster.trackers)
        config.setdefault("default_domain", cluster.domain)
        handler = service.create(FilestoreConfig(**config))
        handlers.append(handler)
        mount = Mount(service.SERVICE_NAME, glammp.filestore.Filestore, handler,
                      service.ORIGIN, dict(service.DEADLINES_MS), service.IDEMPOTENT)
        proc = serve([mount])
        host, port = proc.server.address
        return Store(handler, host, port, proc)

    yield start
    for handler in handlers:
        handler.close()
