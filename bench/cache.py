"""Cache: gets through the `glammp cache` service vs pymemcache used directly, same memcached.

Rows (issue 3's goals):

* single-key get at 1 and 64 concurrent callers: the service (a `glammp cache` process on the
  server core, driven by `bench.loadgen` over N Thrift connections) against pymemcache's
  PooledClient with N greenlets (a process on the same core); goal at 64: >= 1.0x;
* multi-get of 100 keys, in keys/s, against pymemcache `get_many`: goal >= 0.8x.

Rows of issue 4 (no goals yet):

* get_or_compute of a hot key (a hit carrying the read-through envelope, so the XFetch draw
  runs) against plain get of the same size through the same service: the overhead ratio;
* a 5 MiB value put+get, in MiB/s, split into 1 MiB chunks by the service, against pymemcache
  storing it as one item in the same memcached started with ``-I 8m``. One caller each,
  sequential, from the bench process (a 5 MiB request is too big for loadgen's argv).

Both sides run on one core each and read the same memcached; rounds alternate and the median
is reported. As a suite: `python -m bench --seconds 2 --rounds 1 cache_get`. The baseline
side is also this module: `python -m bench.cache pymemcache ADDRESS CALLERS SECONDS KEYS`.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from thrift.protocol.TBinaryProtocol import TBinaryProtocol  # noqa: E402
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol  # noqa: E402
from thrift.transport.TTransport import TMemoryBuffer  # noqa: E402

import glammp.cache.Cache  # noqa: E402
from bench.harness import ROOT, SERVER_CPU, Row, cpu_seconds, load, median  # noqa: E402
from glammp.cache.ttypes import Loader  # noqa: E402
from services.cache import codec  # noqa: E402
from services.cache.local import memcached_argv  # noqa: E402
from services.client import connect  # noqa: E402
from services.core.children import Child, free_port, port_accepts, wait_for  # noqa: E402

GOAL_GET_64 = 1.0
GOAL_MULTI = 0.8
VALUE = b"v" * 100
KEY = "bench:key"
MULTI_KEYS = [f"bench:{i}" for i in range(100)]
HOT_KEY = "bench:hot"
LARGE = os.urandom(5 * 1024 * 1024)
MIB = 1024 * 1024


def request(method: str, *args: object) -> bytes:
    """A framed, multiplexed binary Thrift request for Cache.<method>(*args)."""
    buf = TMemoryBuffer()
    client = glammp.cache.Cache.Client(TMultiplexedProtocol(TBinaryProtocol(buf), "Cache"))
    getattr(client, f"send_{method}")(*args)
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


@contextmanager
def backends(tmp: str) -> Iterator[tuple[str, int, int]]:
    """A memcached (filled) and a `glammp cache` in front of it: (memcached address, service
    port, service pid)."""
    mport = free_port()
    # -I 8m: the pymemcache side of the large-value row stores 5 MiB as one item.
    mc = Child("memcached", memcached_argv(mport, item_size="8m", memory_mb=256), "127.0.0.1",
               mport, os.path.join(tmp, "memcached.log")).start()
    from pymemcache.client.base import Client

    filler = Client(("127.0.0.1", mport))
    filler.set(KEY, VALUE)
    filler.set_many({k: VALUE for k in MULTI_KEYS})
    # A hot read-through item: its envelope expires in an hour, so XFetch draws but never
    # refreshes, and no loader (no gearmand) is needed.
    envelope = codec.pack_envelope(VALUE, 5, int(time.time() * 1000) + 3_600_000)
    filler.set(HOT_KEY, envelope, expire=3600, flags=codec.FLAG_ENVELOPE)
    filler.close()
    port = free_port()
    env = dict(os.environ, GLAMMP__CACHE__POOLS=f'{{default = {{servers = ["{mc.address}"]}}}}',
               GLAMMP__CACHE__GEARMAN_SERVERS='["127.0.0.1:1"]',
               GLAMMP__SERVER__ADMIN_PORT="-1")
    with open(os.path.join(tmp, "service.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--log-level", "warning", "cache",
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}))
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 30,
                 what="glammp cache listening")
        if proc.poll() is not None:
            raise RuntimeError(f"glammp cache exited with {proc.returncode}; see {tmp}")
        yield mc.address, port, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)
        mc.stop()


def pymemcache_rate(address: str, callers: int, seconds: float, keys: int) -> dict:
    """Runs the baseline in its own process on the server core: {"rate": calls/s, ...}."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.cache", "pymemcache", address, str(callers),
         str(seconds), str(keys)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}))
    result: dict = json.loads(out.stdout)
    return result


def rows(seconds: float, rounds: int) -> list[Row]:
    get_req = request("get", KEY, None)
    multi_req = request("get_multi", MULTI_KEYS, None, False)
    out = []
    with tempfile.TemporaryDirectory() as tmp, backends(tmp) as (address, port, pid):
        load(port, 8, 0.5, get_req)  # warm up
        for name, req, callers, keys, goal in (
            ("get 1 key, 1 caller", get_req, 1, 1, None),
            ("get 1 key, 64 callers", get_req, 64, 1, GOAL_GET_64),
            ("get_multi 100 keys, 1 caller (keys/s)", multi_req, 1, 100, None),
            ("get_multi 100 keys, 8 callers (keys/s)", multi_req, 8, 100, GOAL_MULTI),
        ):
            ours: list[float] = []
            theirs: list[float] = []
            cpu: list[float] = []
            base_cpu: list[float] = []
            errors = 0
            for _ in range(rounds):
                r = load(port, callers, seconds, req, pid)
                ours.append(r["rate"] * keys)
                cpu.append(r["cpu_us_per_call"])
                errors += r["errors"]
                base = pymemcache_rate(address, callers, seconds, keys)
                theirs.append(base["rate"] * keys)
                base_cpu.append(base["cpu_us_per_call"])
                errors += base["wrong"]
            unit = "keys/s" if keys > 1 else "calls/s"
            out.append(Row(
                name=f"cache {name}", glammp=median(ours), baseline=median(theirs), unit=unit,
                baseline_name="pymemcache PooledClient direct", goal=goal,
                notes=f"CPU/call: service {median(cpu):.0f} µs, pymemcache "
                f"{median(base_cpu):.0f} µs"
                + (f"; {errors} errors" if errors else ""),
            ))
        out.append(hot_row(port, pid, seconds, rounds, get_req))
        out.append(large_row(address, port, seconds, rounds))
    return out


def hot_row(port: int, pid: int, seconds: float, rounds: int, get_req: bytes) -> Row:
    """get_or_compute on a hot key vs get of a plain key, both through the service."""
    goc_req = request("get_or_compute", HOT_KEY, Loader(name="bench-unused", ttl=3600), None)
    ours: list[float] = []
    theirs: list[float] = []
    errors = 0
    for _ in range(rounds):
        r = load(port, 64, seconds, goc_req, pid)
        ours.append(r["rate"])
        errors += r["errors"]
        base = load(port, 64, seconds, get_req, pid)
        theirs.append(base["rate"])
        errors += base["errors"]
    return Row(name="cache get_or_compute hot key, 64 callers", glammp=median(ours),
               baseline=median(theirs), unit="calls/s", baseline_name="glammp get (same service)",
               goal=None, notes=f"{errors} errors" if errors else "hit + envelope + XFetch draw")


def large_row(address: str, port: int, seconds: float, rounds: int) -> Row:
    """5 MiB put+get through the service (chunked) vs pymemcache (one item, -I 8m)."""
    from pymemcache.client.base import Client

    host, mport = address.rsplit(":", 1)
    ours: list[float] = []
    theirs: list[float] = []
    wrong = 0
    for _ in range(rounds):
        with connect("127.0.0.1", port, "Cache", timeout_s=30) as c:
            moved, started = 0, time.monotonic()
            while time.monotonic() - started < seconds:
                c.put("bench:large", LARGE, None)
                wrong += c.get("bench:large", None).value != LARGE
                moved += 2 * len(LARGE)
            ours.append(moved / MIB / (time.monotonic() - started))
        direct = Client((host, int(mport)))
        try:
            moved, started = 0, time.monotonic()
            while time.monotonic() - started < seconds:
                direct.set("bench:large-direct", LARGE)
                wrong += direct.get("bench:large-direct") != LARGE
                moved += 2 * len(LARGE)
            theirs.append(moved / MIB / (time.monotonic() - started))
        finally:
            direct.close()
    return Row(name="cache 5 MiB put+get, 1 caller", glammp=median(ours),
               baseline=median(theirs), unit="MiB/s",
               baseline_name="pymemcache direct, memcached -I 8m", goal=None,
               notes=(f"{wrong} wrong values; " if wrong else "")
               + "service splits into 1 MiB chunks over Thrift")


def _baseline(address: str, callers: int, seconds: float, keys: int) -> None:
    import gevent
    from pymemcache.client.base import PooledClient

    host, port = address.rsplit(":", 1)
    client = PooledClient((host, int(port)), max_pool_size=callers)
    stop_at = time.monotonic() + seconds
    counts = [0] * callers
    wrong = [0]

    def run(i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            if keys == 1:
                if client.get(KEY) != VALUE:
                    wrong[0] += 1
            elif len(client.get_many(MULTI_KEYS)) != len(MULTI_KEYS):
                wrong[0] += 1
            n += 1
        counts[i] = n

    before = cpu_seconds(os.getpid())
    started = time.monotonic()
    gevent.joinall([gevent.spawn(run, i) for i in range(callers)], raise_error=True)
    elapsed = time.monotonic() - started
    used = cpu_seconds(os.getpid()) - before
    calls = sum(counts)
    print(json.dumps({"rate": calls / elapsed, "calls": calls, "wrong": wrong[0],
                      "cpu_us_per_call": used / max(1, calls) * 1e6}))


if __name__ == "__main__":
    if sys.argv[1] == "pymemcache":
        _baseline(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        from bench.harness import table

        print(table(rows(float(sys.argv[1]), int(sys.argv[2]))))
