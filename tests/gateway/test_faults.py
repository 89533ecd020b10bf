"""Upstream faults for real: instances killed, frozen, draining, all gone."""

from __future__ import annotations

import signal
import socket
import time

import gevent
import gevent.event

from glammp.common.ttypes import ErrorCode, ServiceError
from services.core.children import port_accepts, wait_for
from tests.core.dialects import client

NOT_IDEMPOTENT = ["*.getStatus"]


def _call(host: str, port: int, key: str) -> bytes | ServiceError:
    with client(host, port, "framed-binary", "Cache") as c:
        try:
            return bytes(c.get(key, None).value)
        except ServiceError as e:
            return e


def _pid(host: str, port: int) -> int:
    got = _call(host, port, "pid")
    assert isinstance(got, bytes), got
    return int(got)


def _in_flight_then_kill(gw, victim, callers: int) -> tuple[list, int]:
    host, port = gw.address
    calls = [gevent.spawn(_call, host, port, "sleep:0.8") for _ in range(callers)]
    insts = {i.address: i for i in gw.clusters["Cache"].instances}
    wait_for(lambda: all(i.outstanding > 0 for i in insts.values()), 10,
             what="calls in flight on both instances")
    on_victim = insts[victim.address].outstanding
    victim.kill9()
    gevent.joinall(calls, timeout=30, raise_error=True)
    return [c.value for c in calls], on_victim


def test_killed_instance_fails_only_its_in_flight_calls(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]}, idempotent=NOT_IDEMPOTENT)
    results, on_victim = _in_flight_then_kill(gw, a, 6)
    failed = [r for r in results if isinstance(r, ServiceError)]
    assert len(failed) == on_victim > 0
    for e in failed:
        assert e.code == ErrorCode.UNAVAILABLE and e.origin == "gateway"
        assert e.retryable is False  # it was sent; not idempotent, so not safe to repeat
    assert all(r == b"sleep:0.8" for r in results if not isinstance(r, ServiceError))
    # Later calls go to the survivor; none fails (a refused connect is retried elsewhere).
    host, port = gw.address
    survivor = b.proc.pid if b.proc else 0
    assert {_pid(host, port) for _ in range(20)} == {survivor}


def test_killed_instance_idempotent_calls_are_retried(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]})
    results, on_victim = _in_flight_then_kill(gw, a, 6)
    assert on_victim > 0
    assert results == [b"sleep:0.8"] * 6
    assert gw.metrics.counters.get("gateway_retries", 0) >= on_victim


def test_frozen_instance_answers_504_then_is_ejected(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]},
                 deadlines_ms={"Cache.get": 300}, health_timeout_ms=300)
    host, port = gw.address
    a.freeze()
    codes: list[int] = []
    # Three calls at a time, so the frozen one gets calls even while it holds a stuck one
    # (least-outstanding balancing avoids it otherwise). Calls landing on it time out; once
    # it is ejected every call succeeds.
    for _ in range(40):
        batch = [gevent.spawn(_call, host, port, "x") for _ in range(3)]
        gevent.joinall(batch, timeout=10, raise_error=True)
        codes += [0 if isinstance(g.value, bytes) else g.value.code for g in batch]
        if ErrorCode.TIMEOUT in codes and codes[-9:] == [0] * 9:
            break
    assert ErrorCode.TIMEOUT in codes
    assert set(codes) <= {0, ErrorCode.TIMEOUT}
    assert codes[-9:] == [0] * 9
    inst = next(i for i in gw.clusters["Cache"].instances if i.address == a.address)
    assert not inst.eligible(time.monotonic())


def test_all_instances_down_is_503_not_a_hang(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]}, deadlines_ms={"Cache": 30_000})
    host, port = gw.address
    assert isinstance(_call(host, port, "x"), bytes)
    a.kill9()
    b.kill9()
    for _ in range(5):
        got = _call(host, port, "x")
        assert isinstance(got, ServiceError)
        # 503, not the 504 that waiting for the 30 s deadline would give.
        assert got.code == ErrorCode.UNAVAILABLE and got.retryable is True


def test_draining_instance_gets_no_new_calls(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]})
    host, port = gw.address
    stop = False
    results: list = []

    def caller() -> None:
        while not stop and len(results) < 2000:
            results.append(_call(host, port, "pid"))

    callers = [gevent.spawn(caller) for _ in range(4)]
    wait_for(lambda: len(results) > 20, 10, what="calls flowing")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=20) == 0
    n = len(results)
    wait_for(lambda: len(results) > n + 40, 10, what="calls after the drain")
    stop = True
    gevent.joinall(callers, timeout=10, raise_error=True)
    errors = [r for r in results if isinstance(r, ServiceError)]
    assert errors == []
    survivor = str(b.proc.pid if b.proc else 0).encode()
    assert all(r == survivor for r in results[n + 5:])


def test_gateway_drain_finishes_in_flight_calls(gateway, upstreams):
    (addr, _), = upstreams(1)
    gw = gateway(upstreams={"Cache": [addr]})
    host, port = gw.address
    slow = gevent.spawn(_call, host, port, "sleep:0.5")
    wait_for(lambda: gw.inflight == 1, 5, what="call in flight")
    assert gw.drain(5.0) is True
    assert slow.get(timeout=5) == b"sleep:0.5"
    assert not port_accepts(host, port)


def test_a_drain_answers_a_call_still_waiting_for_its_upstream_connection(gateway, testapps,
                                                                         monkeypatch):
    # The drain begins while the call waits for a connection to the instance to open: the
    # call still goes out and its caller gets the answer before its connection closes.
    a, = testapps(1)
    gw = gateway(upstreams={"Cache": [a.address]})
    gw.backends.stop()  # its status queries would open the pool's first connection
    host, port = gw.address
    inst = gw.clusters["Cache"].instances[0]
    opening = gevent.event.Event()
    connect = socket.create_connection

    def slow_connect(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        if address == (inst.host, inst.port) and gw.inflight:  # not a health check's
            opening.set()
            gevent.sleep(0.3)
        return connect(address, *args, **kwargs)

    # Patched where the gateway looks it up (a compiled gateway's classes take no patches).
    monkeypatch.setattr(socket, "create_connection", slow_connect)
    caller = gevent.spawn(_call, host, port, "during-drain")
    assert opening.wait(5) and gw.inflight == 1
    drained = gevent.spawn(gw.drain, 5.0)
    assert caller.get(timeout=10) == b"during-drain"
    assert drained.get(timeout=10) is True


def test_sticky_calls_keep_to_one_instance_and_leave_it_when_it_drains(gateway, testapps):
    a, b = testapps(2)
    gw = gateway(upstreams={"Cache": [a.address, b.address]}, sticky=["Cache.get"])
    host, port = gw.address
    pids = {str(app.proc.pid).encode(): app for app in (a, b) if app.proc}
    with client(host, port, "framed-binary", "Cache") as c:
        seen = {bytes(c.get("pid", None).value) for _ in range(30)}
        # Balanced, 30 calls would all go to one of two idle instances once in 2^29 runs.
        assert len(seen) == 1
        pinned = pids[seen.pop()]
        other = b if pinned is a else a
        # A call the pinned instance holds keeps it draining (not yet gone) while the
        # gateway's health checks, every 200 ms, notice; its request is written before the
        # probe's, so it is read before the probe is answered.
        with client("127.0.0.1", pinned.port, "framed-binary", "Cache") as holder:
            holder.send_get("sleep:0.9", None)  # within the testapp's 1 s deadline
            assert _pid("127.0.0.1", pinned.port) == pinned.proc.pid
            pinned.proc.send_signal(signal.SIGTERM)
            inst = {i.address: i for i in gw.clusters["Cache"].instances}[pinned.address]
            # The drain closes the health check's connection and refuses a new one, or
            # answers STOPPING on it: either way the instance takes no new calls.
            wait_for(lambda: not inst.eligible(time.monotonic()), 10,
                     what="the gateway to see the drain")
            assert bytes(c.get("pid", None).value) == str(other.proc.pid).encode()
            assert holder.recv_get().value == b"sleep:0.9"  # the drain let it finish
