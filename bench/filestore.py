"""Filestore: the service against direct MogileFS use (tracker + HTTP) of the same storage.

Rows (each the median of `rounds` alternating rounds of `seconds` each, one caller):

* store 1 MiB: `store` through glammp against create_open + PUT + create_close done directly
  by this process (class mindevcount=1, so replication does not compete).
* fetch 1 MiB: `fetch` through glammp against get_paths + GET done directly; and again with
  the service's path cache on (a memcached), as a frontend's hot file is read in production
  (no goal: the direct side has no cache).
* 100 MiB streamed store and fetch, MiB/s: an upload session (4 MiB chunks) and ranged reads
  against one streamed PUT and one GET; the notes give the service's peak RSS (VmHWM).

The dev cluster (tracker, two storage nodes) runs as child processes; the glammp filestore
process is pinned to the server core, this process to the load core.
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from bench.harness import LOAD_CPU, Row, median, served
from glammp.filestore.ttypes import StoreOptions
from services.cache.local import memcached_argv
from services.client import connect
from services.core.children import Child, free_port
from services.mogilefs.client import TrackerClient
from services.mogilefs.devcluster import DevCluster

MIB = 1024 * 1024
ONE = os.urandom(MIB)
BIG = 100 * MIB
CHUNK = 4 * MIB
PIECE = os.urandom(CHUNK)
CLASS = "single"


def _client(port: int) -> connect:
    return connect("127.0.0.1", port, "Filestore", timeout_s=600)


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def _service(tmp: str, trackers: list[str],
             path_cache: str | None = None) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = os.path.join(tmp, f"glammp-{port}.toml")
    with open(conf, "w") as f:
        f.write(f"[server]\nport = {port}\nadmin_port = -1\n"
                f"[filestore]\ntrackers = {trackers!r}\n".replace("'", '"'))
        if path_cache:
            f.write(f'[filestore.path_cache]\nservers = ["{path_cache}"]\n')
    log = os.path.join(tmp, f"filestore-{port}.log")
    argv = [sys.executable, "-m", "services.cli", "-c", conf, "filestore"]
    with served(argv, port, log) as pid:
        yield port, pid


def _loop(seconds: float, op: Callable[[], object]) -> float:
    """Calls per second of `op` run back to back for `seconds`."""
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        op()
        n += 1
    return n / (time.monotonic() - start)


class Direct:
    """MogileFS used the way a MogileFS client library does: tracker line + HTTP."""

    def __init__(self, tracker_port: int, domain: str) -> None:
        self.tracker = TrackerClient("127.0.0.1", tracker_port)
        self.domain = domain
        self.http: dict[int, http.client.HTTPConnection] = {}
        self.seq = 0

    def _conn(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        port = parts.port or 80
        if port not in self.http:
            self.http[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        return self.http[port], parts.path

    def store(self, key: str, body: bytes | None, size: int) -> None:
        o = self.tracker.call("create_open", domain=self.domain, key=key, size=size,
                              **{"class": CLASS})
        conn, path = self._conn(o["path"])
        conn.putrequest("PUT", path)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        left = size
        while left > 0:
            piece = body if body is not None else PIECE[:min(CHUNK, left)]
            conn.send(piece)
            left -= len(piece)
        resp = conn.getresponse()
        resp.read()
        assert resp.status // 100 == 2, resp.status
        self.tracker.call("create_close", domain=self.domain, key=key, fid=o["fid"],
                          devid=o["devid"], path=o["path"], size=size)

    def fetch(self, key: str) -> int:
        p = self.tracker.call("get_paths", domain=self.domain, key=key, noverify=1)
        conn, path = self._conn(p["path1"])
        conn.request("GET", path)
        resp = conn.getresponse()
        n = 0
        while chunk := resp.read(CHUNK):
            n += len(chunk)
        assert resp.status == 200, resp.status
        return n

    def close(self) -> None:
        self.tracker.close()
        for conn in self.http.values():
            conn.close()


def _glammp_store_big(c: Any, key: str) -> None:
    # The direct side's class: one copy, so no replication competes with what is measured.
    up = c.begin_upload("", key, StoreOptions(storage_class=CLASS))
    offset = 0
    while offset < BIG:
        offset = c.append_chunk(up.upload_id, offset, PIECE[:min(CHUNK, BIG - offset)])
    c.finish_upload(up.upload_id, None)


def _glammp_fetch_big(c: Any, key: str) -> int:
    got = 0
    while got < BIG:
        data = c.fetch_range("", key, got, CHUNK)
        if not data:
            break
        got += len(data)
    return got


def rows(seconds: float, rounds: int) -> list[Row]:
    os.sched_setaffinity(0, {LOAD_CPU})
    with tempfile.TemporaryDirectory(prefix="glammp-bench-fs-") as tmp:
        cluster = DevCluster(os.path.join(tmp, "mogilefs"),
                             tracker_options={"min_free_space_mb": 1}).start()
        mport = free_port()
        mc = Child("memcached", memcached_argv(mport), "127.0.0.1", mport,
                   os.path.join(tmp, "memcached.log")).start()
        try:
            with _service(tmp, cluster.trackers) as (port, pid), \
                    _client(port) as c:
                out = _measure(c, pid, Direct(cluster.tracker_port, cluster.domain),
                               seconds, rounds)
            with _service(tmp, cluster.trackers, mc.address) as (port, _), \
                    _client(port) as c:
                out.insert(2, _cached_fetch(c, Direct(cluster.tracker_port, cluster.domain),
                                            seconds, rounds))
            return out
        finally:
            mc.stop()
            cluster.stop()


def _cached_fetch(c: Any, direct: Direct, seconds: float, rounds: int) -> Row:
    c.store("", "bench/cached", ONE, StoreOptions(storage_class=CLASS))
    direct.store("bench/cached-direct", ONE, MIB)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):
        ours.append(_loop(seconds, lambda: c.fetch("", "bench/cached", None)))
        theirs.append(_loop(seconds, lambda: direct.fetch("bench/cached-direct")))
    direct.close()
    return Row("filestore fetch 1 MiB, paths cached", median(ours), median(theirs), "ops/s",
               "tracker+HTTP direct (no cache)",
               notes="the service's path cache in memcached: no tracker call per fetch")


def _measure(c: Any, pid: int, direct: Direct, seconds: float, rounds: int) -> list[Row]:
    seq = [0]

    def next_key(prefix: str) -> str:
        seq[0] += 1
        return f"{prefix}/{seq[0]}"

    opts = StoreOptions(storage_class=CLASS)
    c.store("", "bench/one", ONE, opts)
    direct.store("bench/one-direct", ONE, MIB)
    stores: dict[str, list[float]] = {"glammp": [], "direct": []}
    fetches: dict[str, list[float]] = {"glammp": [], "direct": []}
    for _ in range(rounds):
        stores["glammp"].append(_loop(seconds, lambda: c.store("", next_key("s"), ONE, opts)))
        stores["direct"].append(_loop(seconds, lambda: direct.store(next_key("d"), ONE, MIB)))
        fetches["glammp"].append(_loop(seconds, lambda: c.fetch("", "bench/one", None)))
        fetches["direct"].append(_loop(seconds, lambda: direct.fetch("bench/one-direct")))
    big: dict[str, list[float]] = {k: [] for k in ("gs", "ds", "gf", "df")}
    for _ in range(rounds):
        t = time.monotonic()
        _glammp_store_big(c, "bench/big")
        big["gs"].append(100 / (time.monotonic() - t))
        t = time.monotonic()
        direct.store("bench/big-direct", None, BIG)
        big["ds"].append(100 / (time.monotonic() - t))
        t = time.monotonic()
        assert _glammp_fetch_big(c, "bench/big") == BIG
        big["gf"].append(100 / (time.monotonic() - t))
        t = time.monotonic()
        assert direct.fetch("bench/big-direct") == BIG
        big["df"].append(100 / (time.monotonic() - t))
    direct.close()
    peak = _peak_rss_mib(pid)
    base = "tracker+HTTP direct"
    return [
        Row("filestore store 1 MiB", median(stores["glammp"]), median(stores["direct"]),
            "ops/s", base, goal=0.7),
        Row("filestore fetch 1 MiB", median(fetches["glammp"]), median(fetches["direct"]),
            "ops/s", base, goal=0.7),
        Row("filestore 100 MiB streamed store", median(big["gs"]), median(big["ds"]),
            "MiB/s", "one streamed PUT", notes=f"service peak RSS {peak:.0f} MiB"),
        Row("filestore 100 MiB streamed fetch", median(big["gf"]), median(big["df"]),
            "MiB/s", "one GET", notes=f"4 MiB ranged reads; peak RSS {peak:.0f} MiB"),
    ]
