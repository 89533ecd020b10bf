"""MogileFS: the tracker and storage node against nginx serving the same files, same run.

Rows (each the median of `rounds` alternating rounds of `seconds` each):

* store: create_open + PUT + create_close of 1 KiB (class mindevcount=1, so no replication)
  against a plain PUT of the same bytes to nginx; 8 concurrent callers.
* read: get_paths (with its HEAD check) + GET against a plain GET from nginx; 8 callers.
* get_paths alone against the HEAD it has to make (nginx HEAD); 8 callers.
* PUT/GET throughput of 1 MiB and 100 MiB bodies, storage node against nginx, one caller.
* memory: the storage node's RSS growth while a 1 GiB body streams in and out, against nginx's.

Servers (tracker, storage node, nginx) are pinned to core 0, this process to core 1.
Usable as a suite: `python -m bench --seconds 2 --rounds 1 mogilefs`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import gevent

from bench.harness import LOAD_CPU, Row, median, served
from services.core.children import free_port
from services.mogilefs.client import TrackerClient

NGINX = "/usr/sbin/nginx"
CALLERS = 8
SMALL = os.urandom(1024)
MIB = 1024 * 1024
CHUNK = os.urandom(MIB)
NGINX_CONF = """daemon off; master_process off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {tmp}/ngbody; client_max_body_size 0;
  server {{ listen 127.0.0.1:{port}; root {root};
    location / {{ dav_methods PUT DELETE MKCOL; create_full_put_path on; }} }} }}
"""


@contextmanager
def servers(tmp: str) -> Iterator[dict[str, int]]:
    """A storage node (dev1), a tracker using it, and nginx; yields ports and pids."""
    mod = [sys.executable, "-m", "services.mogilefs"]
    sport, tport, nport = free_port(), free_port(), free_port()
    os.makedirs(os.path.join(tmp, "nginx", "dev1"))
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=nport, root=os.path.join(tmp, "nginx")))
    with served([*mod, "mogstored", "--port", str(sport), "--docroot",
                   os.path.join(tmp, "store"), "--device", "1"], sport,
                  os.path.join(tmp, "mogstored.log")) as spid, \
         served([*mod, "mogilefsd", "--port", str(tport), "--db-path",
                   os.path.join(tmp, "t.sqlite3"), "--option", "min_free_space_mb=1"], tport,
                  os.path.join(tmp, "mogilefsd.log")), \
         served([NGINX, "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp, "-e", "stderr"],
                  nport, os.path.join(tmp, "nginx.log")) as npid:
        with TrackerClient("127.0.0.1", tport) as c:
            c.call("create_host", host="h1", ip="127.0.0.1", port=sport, status="alive")
            c.call("create_device", devid=1, hostname="h1")
            c.call("create_domain", domain="bench")
            c.call("create_class", domain="bench", **{"class": "one"}, mindevcount=1)
        yield {"storage": sport, "tracker": tport, "nginx": nport, "storage_pid": spid,
               "nginx_pid": npid}


class Http:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def put(self, path: str, body: bytes) -> None:
        self.conn.request("PUT", path, body=body)
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status // 100 == 2, resp.status

    def get(self, path: str) -> int:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        n = 0
        while chunk := resp.read(MIB):
            n += len(chunk)
        assert resp.status == 200, resp.status
        return n

    def put_stream(self, path: str, size: int) -> None:
        self.conn.putrequest("PUT", path)
        self.conn.putheader("Content-Length", str(size))
        self.conn.endheaders()
        left = size
        while left > 0:
            piece = CHUNK[:min(MIB, left)]
            self.conn.send(piece)
            left -= len(piece)
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status // 100 == 2, resp.status


def rate(callers: int, seconds: float, make: Callable[[int], Callable[[], None]]) -> float:
    """Calls per second of `callers` greenlets each running its `make(i)()` in a loop."""
    count = [0]
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        op = make(i)
        while time.monotonic() < deadline:
            op()
            count[0] += 1

    start = time.monotonic()
    gevent.joinall([gevent.spawn(run, i) for i in range(callers)], raise_error=True)
    return count[0] / (time.monotonic() - start)


def store_op(tport: int, i: int) -> Callable[[], None]:
    c = TrackerClient("127.0.0.1", tport)
    seq = [0]

    def op() -> None:
        seq[0] += 1
        key = f"k{i}-{seq[0]}"
        o = c.call("create_open", domain="bench", key=key, **{"class": "one"})
        parts = urlsplit(o["path"])
        web = Http(parts.port or 80)
        web.put(parts.path, SMALL)
        web.conn.close()
        c.call("create_close", domain="bench", key=key, fid=o["fid"], devid=o["devid"],
               path=o["path"], size=len(SMALL))

    return op


def nginx_put_op(nport: int, i: int) -> Callable[[], None]:
    seq = [0]

    def op() -> None:
        seq[0] += 1
        web = Http(nport)
        web.put(f"/dev1/{i}/{seq[0]}.fid", SMALL)
        web.conn.close()

    return op


def read_op(tport: int, keys: list[str], i: int) -> Callable[[], None]:
    c = TrackerClient("127.0.0.1", tport)
    seq = [0]

    def op() -> None:
        seq[0] += 1
        p = c.call("get_paths", domain="bench", key=keys[seq[0] % len(keys)])
        parts = urlsplit(p["path1"])
        web = Http(parts.port or 80)
        web.get(parts.path)
        web.conn.close()

    return op


def get_paths_op(tport: int, keys: list[str], i: int) -> Callable[[], None]:
    c = TrackerClient("127.0.0.1", tport)
    seq = [0]

    def op() -> None:
        seq[0] += 1
        c.call("get_paths", domain="bench", key=keys[seq[0] % len(keys)])

    return op


def nginx_head_op(nport: int, i: int) -> Callable[[], None]:
    def op() -> None:
        web = Http(nport)
        web.conn.request("HEAD", "/dev1/small.fid")
        web.conn.getresponse().read()
        web.conn.close()

    return op


def nginx_get_op(nport: int, i: int) -> Callable[[], None]:
    def op() -> None:
        web = Http(nport)
        web.get("/dev1/small.fid")
        web.conn.close()

    return op


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_growth(pid: int, work: Callable[[], None]) -> float:
    """RSS growth (MB) of `pid`, sampled every 20 ms by a greenlet while `work()` runs."""
    before = rss_mb(pid)
    peak = [before]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(pid))
            gevent.sleep(0.02)

    sampler = gevent.spawn(sample)
    try:
        work()
    finally:
        sampler.kill()
    return peak[0] - before


def rows(seconds: float, rounds: int) -> list[Row]:
    os.sched_setaffinity(0, {LOAD_CPU})
    tmp = tempfile.mkdtemp(prefix="bench-mogilefs-")
    out: list[Row] = []
    try:
        with servers(tmp) as s:
            sp, tp, np_ = s["storage"], s["tracker"], s["nginx"]
            store, plain = [], []
            for _ in range(rounds):
                store.append(rate(CALLERS, seconds, lambda i: store_op(tp, i)))
                plain.append(rate(CALLERS, seconds, lambda i: nginx_put_op(np_, i)))
            out.append(Row("mogilefs store 1 KiB (open+PUT+close)", median(store),
                           median(plain), "ops/s", "nginx PUT 1 KiB",
                           notes=f"{CALLERS} callers"))
            keys = [f"k{i}-1" for i in range(CALLERS)]
            Http(np_).put("/dev1/small.fid", SMALL)
            reads, plain = [], []
            for _ in range(rounds):
                reads.append(rate(CALLERS, seconds, lambda i: read_op(tp, keys, i)))
                plain.append(rate(CALLERS, seconds, lambda i: nginx_get_op(np_, i)))
            out.append(Row("mogilefs get_paths + GET 1 KiB", median(reads), median(plain),
                           "ops/s", "nginx GET 1 KiB", notes=f"{CALLERS} callers"))
            paths, heads = [], []
            for _ in range(rounds):
                paths.append(rate(CALLERS, seconds, lambda i: get_paths_op(tp, keys, i)))
                heads.append(rate(CALLERS, seconds, lambda i: nginx_head_op(np_, i)))
            out.append(Row("mogilefs get_paths (HEAD-checks path1)", median(paths),
                           median(heads), "ops/s", "nginx HEAD",
                           notes=f"{CALLERS} callers, persistent tracker connections"))
            for size_mib in (1, 100):
                out += throughput(sp, np_, size_mib, rounds)
            size = 1024 * MIB

            def stream(port: int) -> Callable[[], None]:
                def work() -> None:
                    web = Http(port)
                    web.put_stream("/dev1/big.fid", size)
                    assert web.get("/dev1/big.fid") == size
                    web.conn.close()
                return work

            ours = peak_rss_growth(s["storage_pid"], stream(sp))
            theirs = peak_rss_growth(s["nginx_pid"], stream(np_))
            out.append(Row("storage node RSS growth, 1 GiB PUT+GET", ours, theirs, "MB",
                           "nginx RSS growth", notes="lower is better; flat = bounded"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def throughput(sport: int, nport: int, size_mib: int, rounds: int) -> list[Row]:
    size = size_mib * MIB
    result: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, port in (("ours", sport), ("nginx", nport)):
            web = Http(port)
            t = time.monotonic()
            web.put_stream(f"/dev1/t{size_mib}.fid", size)
            result.setdefault((name, "PUT"), []).append(size_mib / (time.monotonic() - t))
            t = time.monotonic()
            web.get(f"/dev1/t{size_mib}.fid")
            result.setdefault((name, "GET"), []).append(size_mib / (time.monotonic() - t))
            web.conn.close()
    return [Row(f"storage node {verb} {size_mib} MiB", median(result[("ours", verb)]),
                median(result[("nginx", verb)]), "MiB/s", f"nginx {verb}")
            for verb in ("PUT", "GET")]

