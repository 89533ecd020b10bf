"""Faults: a memcached killed with SIGKILL mid-stream, a peer that answers too late, and 200
greenlets sharing one small pool."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from glammp.cache.ttypes import CounterOptions, StoreResult
from services.cache.client import Cluster
from services.cache.protocol import Connection
from services.cache.ring import Node, Ring
from services.cache.server import ServerSettings
from services.core.children import Child, wait_for
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler

#: Bound on any single call in these tests, seconds: a call still running then has hung.
CALL_BOUND_S = 3.0


def bounded(fn: Callable[..., object], *args: object) -> object:
    """Calls fn under a gevent.Timeout (the caller's deadline); the test fails on a hang."""
    with gevent.Timeout(CALL_BOUND_S, AssertionError("call hung past its deadline")):
        return fn(*args)


def outcome(fn: Callable[..., object], *args: object) -> object:
    try:
        return bounded(fn, *args)
    except ServiceError as e:
        return e


def three(make_memcached: Callable[..., Child]) -> list[Child]:
    return [make_memcached() for _ in range(3)]


FAST = dict(failure_limit=2, retry_timeout_ms=200, connect_timeout_ms=500, io_timeout_ms=1000)


def test_kill9_without_eject_fails_fast_then_readmits(
    make_memcached: Callable[..., Child], make_handler: MakeHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    children = three(make_memcached)
    h = make_handler([c.address for c in children], **FAST)
    victim = children[1]
    keys = [f"k{i}" for i in range(60)]
    owner = {k: f"{(s := h.server_for_key(k, None)).host}:{s.port}" for k in keys}
    for k in keys:
        assert h.put(k, b"v", None) == StoreResult.STORED
    victim.kill9()
    errors_seen: list[ServiceError] = []
    for _ in range(3):
        for k in keys:
            result = outcome(h.get, k, None)
            if owner[k] == victim.address:
                assert isinstance(result, ServiceError)
                errors_seen.append(result)
            else:
                assert getattr(result, "found", False) is True
    assert {e.code for e in errors_seen} == {503}
    assert all(e.retryable for e in errors_seen)
    server = h.pools["default"].servers[1]
    assert server.down
    # Down for many retry periods while the process is dead: probes fail, no blind re-admit.
    gevent.sleep(0.8)
    assert server.down
    victim_key = next(k for k in keys if owner[k] == victim.address)
    opened: list[str] = []
    real_open = Connection.open

    def counting_open(host: str, port: int, timeout_s: float) -> Connection:
        opened.append(f"{host}:{port}")
        return real_open(host, port, timeout_s)

    monkeypatch.setattr(Connection, "open", staticmethod(counting_open))
    refused = outcome(h.put, victim_key, b"x", None)
    assert isinstance(refused, ServiceError) and refused.code == 503
    assert refused.retry_after_ms == 200
    assert victim.address not in opened  # failed fast, without trying to connect
    monkeypatch.undo()
    victim.start()
    wait_for(lambda: not server.down, 5, 0.02, "re-admission after a successful probe")
    assert h.put(victim_key, b"back", None) == StoreResult.STORED
    assert h.get(victim_key, None).value == b"back"


def test_kill9_with_eject_remaps_like_libmemcached(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    children = three(make_memcached)
    addresses = [c.address for c in children]
    h = make_handler(addresses, eject=True, **FAST)
    keys = [f"e{i}" for i in range(120)]
    children[0].kill9()
    results: list[object] = []
    for _ in range(3):
        results += [outcome(h.put, k, b"v", None) for k in keys]
    # Once ejected, every key is stored on the ring over the two live servers.
    assert results[-len(keys):] == [StoreResult.STORED] * len(keys)
    early_errors = [r for r in results if isinstance(r, ServiceError)]
    assert all(e.code == 503 for e in early_errors) and len(early_errors) <= 4
    live_ring = Ring([Node.parse(a) for a in addresses], "ketama", [1, 2])
    for k in keys:
        s = h.server_for_key(k, None)
        assert f"{s.host}:{s.port}" == live_ring.node_for(k.encode()).address
        assert h.get(k, None).found
    children[0].start()
    cluster = h.pools["default"]
    wait_for(lambda: not cluster.servers[0].down, 5, 0.02, "probe re-admits the server")
    assert cluster.ring is not None and cluster.ring.live == (0, 1, 2)


def test_quick_restart_costs_at_most_one_call(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    child = make_memcached()
    h = make_handler([child.address], **FAST)
    server = h.pools["default"].servers[0]
    gevent.joinall([gevent.spawn(h.put, f"q{i}", b"x", None) for i in range(8)],
                   raise_error=True)
    assert len(server._idle) > 1  # several pooled connections, all about to die
    child.kill9()
    child.start()
    results = [outcome(h.put, f"r{i}", b"y", None) for i in range(10)]
    failed = [r for r in results if isinstance(r, ServiceError)]
    assert len(failed) <= 1 and all(e.code == 503 for e in failed)
    assert results[-1] == StoreResult.STORED and not server.down


def test_stream_of_calls_during_kill_never_hangs(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    children = three(make_memcached)
    h = make_handler([c.address for c in children], **FAST)
    codes: list[int] = []
    ok = 0
    stop = time.monotonic() + 1.5

    def stream(n: int) -> None:
        nonlocal ok
        i = 0
        while time.monotonic() < stop and i < 2000:
            key = f"s{n}:{i}"
            for fn, args in ((h.put, (key, b"x", None)), (h.get, (key, None)),
                             (h.increment, (key + "c", 1, CounterOptions(initial=0)))):
                r = outcome(fn, *args)
                if isinstance(r, ServiceError):
                    codes.append(int(r.code))
                else:
                    ok += 1
            i += 1

    workers = [gevent.spawn(stream, n) for n in range(8)]
    gevent.sleep(0.3)
    children[2].kill9()
    gevent.joinall(workers, raise_error=True)
    assert ok > 0 and codes
    assert set(codes) <= {503, 504}


class SlowPeer:
    """A fake memcached answering keys that start with "slow" after `delay_s`."""

    def __init__(self, delay_s: float = 0.3) -> None:
        self.delay_s = delay_s
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.address[1]

    def handle(self, sock: object, _addr: object) -> None:
        f = sock.makefile("rb")  # type: ignore[attr-defined]
        while True:
            line = f.readline()
            if not line:
                return
            words = line.split()
            if words and words[0] in (b"get", b"gets"):
                out = b""
                for key in words[1:]:
                    if key.startswith(b"slow"):
                        gevent.sleep(self.delay_s)
                    out += b"VALUE %s 0 %d 1\r\n%s\r\n" % (key, len(key) + 2, b"v:" + key)
                reply = out + b"END\r\n"
            elif words and words[0] == b"ma":
                if words[1].startswith(b"slow"):
                    gevent.sleep(self.delay_s)
                    reply = b"VA 4\r\n1000\r\n"
                else:
                    reply = b"VA 1\r\n5\r\n"
            elif words and words[0] == b"delete":
                if words[1].startswith(b"slow"):
                    gevent.sleep(self.delay_s)
                reply = b"NOT_FOUND\r\n" if words[1].startswith(b"missing") else b"DELETED\r\n"
            elif words and words[0] == b"version":
                reply = b"VERSION fake\r\n"
            else:
                reply = b"ERROR\r\n"
            sock.sendall(reply)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def slow_peer() -> Iterator[SlowPeer]:
    peer = SlowPeer()
    yield peer
    peer.close()


def test_timeout_mid_call_never_corrupts_a_later_call(slow_peer: SlowPeer) -> None:
    cluster = Cluster("fake", [Node("127.0.0.1", slow_peer.port)],
                      settings=ServerSettings(pool_size=2, failure_limit=100))
    try:
        for _ in range(4):  # more timeouts than pool slots: none may leak
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.05):
                    cluster.arithmetic(cluster.resolve("slow_ctr"), 1, False, None, 0,
                                       time.monotonic() + 5)
            # pymemcache returned 1000 (the slow answer) here.
            assert cluster.arithmetic(cluster.resolve("other_ctr"), 1, False, None, 0,
                                      time.monotonic() + 5) == 5
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.05):
                    cluster.delete(cluster.resolve("slowK"), time.monotonic() + 5)
            assert cluster.delete(cluster.resolve("missingK"), time.monotonic() + 5) is False
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.05):
                    cluster.get(cluster.resolve("slow1"), time.monotonic() + 5)
            hit = cluster.get(cluster.resolve("fast1"), time.monotonic() + 5)
            assert hit is not None and hit[1] == b"v:fast1"
        # Every interrupted connection was closed and no slot leaked (the batcher still owns
        # the last slow read until its reply arrives).
        wait_for(lambda: cluster.servers[0]._slots.counter == 2, 3, 0.01, "slots released")
    finally:
        cluster.close()


def test_deadline_shorter_than_reply_is_504(slow_peer: SlowPeer) -> None:
    cluster = Cluster("fake", [Node("127.0.0.1", slow_peer.port)],
                      settings=ServerSettings(failure_limit=100))
    try:
        with pytest.raises(ServiceError) as info:
            cluster.delete(cluster.resolve("slowX"), time.monotonic() + 0.05)
        assert info.value.code == 504
        with pytest.raises(ServiceError) as info:
            cluster.get(cluster.resolve("slowY"), time.monotonic() + 0.05)
        assert info.value.code == 504
        assert cluster.delete(cluster.resolve("x"), time.monotonic() + 5) is True
    finally:
        cluster.close()


def test_reads_arriving_during_a_read_are_coalesced(
    slow_peer: SlowPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster("fake", [Node("127.0.0.1", slow_peer.port)])
    round_trips: list[int] = []
    original = Connection.retrieve

    def counting(self: Connection, command: bytes, keys: list[bytes], deadline: float) -> object:
        round_trips.append(len(keys))
        return original(self, command, keys, deadline)

    monkeypatch.setattr(Connection, "retrieve", counting)
    try:
        def get(name: str) -> bytes | None:
            found = cluster.get(cluster.resolve(name), time.monotonic() + 5)
            return found[1] if found else None

        first = gevent.spawn(get, "slow0")  # in flight for 0.3 s: the others queue
        gevent.sleep(0.05)
        jobs = [gevent.spawn(get, f"k{i}") for i in range(63)]
        gevent.joinall([first, *jobs], raise_error=True)
        assert first.value == b"v:slow0"
        assert [j.value for j in jobs] == [b"v:k%d" % i for i in range(63)]
        assert round_trips[0] == 1 and sum(round_trips) == 64
        assert len(round_trips) <= 2  # 63 reads in one gets, not 63
    finally:
        cluster.close()


def test_200_greenlets_one_small_pool(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, pool_size=4)
    wrong: list[str] = []

    def hammer(n: int) -> None:
        for i in range(15):
            key = f"h{n}:{i}"
            value = b"%d-%d" % (n, i)
            assert h.put(key, value, None) == StoreResult.STORED
            got = h.get(key, None)
            if got.value != value:
                wrong.append(key)
            if h.increment(f"hc{n % 7}", 1, CounterOptions(initial=0)).value < 0:
                wrong.append("counter")
        multi = h.get_multi([f"h{n}:{i}" for i in range(15)], None, True)
        if [m.value for m in multi] != [b"%d-%d" % (n, i) for i in range(15)]:
            wrong.append(f"multi {n}")

    jobs = [gevent.spawn(hammer, n) for n in range(200)]
    with gevent.Timeout(120):
        gevent.joinall(jobs, raise_error=True)
    assert wrong == []
    total = sum(h.get(f"hc{j}", None).found and int(h.get(f"hc{j}", None).value.strip())
                for j in range(7))
    assert total == 200 * 15 - 7  # each counter's creation does not add its delta


def test_multi_key_requests_go_to_servers_in_parallel() -> None:
    """Three fake servers each hold their `gets` reply until all three requests arrived: a
    client that asked them one after the other would make the first one give up waiting."""
    arrived: list[int] = []
    all_in = gevent.event.Event()
    saw_all: list[bool] = []

    def handle(sock: object, _addr: object) -> None:
        f = sock.makefile("rb")  # type: ignore[attr-defined]
        while line := f.readline():
            keys = line.split()[1:]
            arrived.append(1)
            if len(arrived) == 3:
                all_in.set()
            saw_all.append(all_in.wait(2.0) is True)
            out = b"".join(b"VALUE %s 0 1 7\r\nx\r\n" % k for k in keys)
            sock.sendall(out + b"END\r\n")  # type: ignore[attr-defined]

    peers = [StreamServer(("127.0.0.1", 0), handle) for _ in range(3)]
    for p in peers:
        p.start()
    cluster = Cluster("fake", [Node("127.0.0.1", p.address[1]) for p in peers],
                      settings=ServerSettings(io_timeout_s=5))
    try:
        keys = [cluster.resolve(f"k{i}") for i in range(60)]
        assert len({k.server for k in keys}) == 3
        found = cluster.get_many(keys, time.monotonic() + 5)
        assert len(found) == 60
        assert saw_all == [True, True, True]
    finally:
        cluster.close()
        for p in peers:
            p.stop()


def test_get_multi_returns_partial_results_when_a_server_dies(
    make_memcached: Callable[..., Child], make_handler: MakeHandler
) -> None:
    children = three(make_memcached)
    h = make_handler([c.address for c in children], **FAST)
    keys = [f"p{i}" for i in range(30)]
    for k in keys:
        assert h.put(k, b"v" + k.encode(), None) == StoreResult.STORED
    owner = {k: f"{(s := h.server_for_key(k, None)).host}:{s.port}" for k in keys}
    victim = children[0]
    lost = [k for k in keys if owner[k] == victim.address]
    assert 0 < len(lost) < len(keys)
    victim.kill9()
    items = bounded(h.get_multi, keys, None, True)
    assert [i.key for i in items] == keys  # type: ignore[attr-defined]
    assert [i.found for i in items] == [k not in lost for k in keys]  # type: ignore[attr-defined]
    assert [i.value for i in items if i.found] == [  # type: ignore[attr-defined]
        b"v" + k.encode() for k in keys if k not in lost
    ]
    assert h.counters()["cache.default.partial_misses"] == len(lost)
    # Only the dead server's keys: nothing to return, so its error is raised.
    err = outcome(h.get_multi, lost, None, True)
    assert isinstance(err, ServiceError) and err.code == 503
    for child in children[1:]:
        child.kill9()
    err = outcome(h.get_multi, keys, None, True)
    assert isinstance(err, ServiceError) and err.code == 503
