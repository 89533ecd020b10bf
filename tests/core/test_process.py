"""Server processes: drain on SIGTERM, several processes on one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import gevent
import pytest

from glammp.base.ttypes import Status
from glammp.common.ttypes import ErrorCode, ServiceError
from services.core.children import free_port, port_accepts, wait_for
from tests.core.dialects import client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def spawn() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.core.serve_testapp", str(port), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 20,
                 what="test server listening")
        assert proc.poll() is None, "the test server exited at start"
        return proc, port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_sigterm_drains_in_flight_calls(spawn):
    proc, port = spawn()
    results: list[bytes] = []

    def slow_call() -> None:
        with client("127.0.0.1", port, "framed-binary", "Cache") as c:
            results.append(c.get("sleep:0.6", None).value)

    with client("127.0.0.1", port, "framed-binary", "Base") as idle:
        assert idle.getStatus() == Status.ALIVE
        callers = [gevent.spawn(slow_call) for _ in range(3)]
        # Three sleepers plus the getCounters call asking.
        wait_for(lambda: idle.getCounters()["glammp.active_requests"] == 4, 10,
                 what="the three calls running in the handler")
        proc.send_signal(signal.SIGTERM)
        gevent.joinall(callers, timeout=10, raise_error=True)
        assert results == [b"sleep:0.6"] * 3
        assert proc.wait(timeout=10) == 0
    assert not port_accepts("127.0.0.1", port)



def test_two_processes_share_the_port_and_sum_their_counters(spawn):
    proc, port = spawn("2")
    pids = set()
    calls = 0
    deadline = time.monotonic() + 20
    # Each new connection lands on one of the two processes; both must serve.
    while len(pids) < 2:
        assert time.monotonic() < deadline, f"only saw pids {pids}"
        with client("127.0.0.1", port, "framed-binary", "Cache") as c:
            pids.add(int(c.get("pid", None).value))
            with pytest.raises(ServiceError) as e:
                c.get("missing", None)
            assert e.value.code == ErrorCode.NOT_FOUND
            calls += 2
    # Snapshots are published every second; the sum must reach exactly what was sent.
    with client("127.0.0.1", port, "framed-binary", "Base") as c:
        wait_for(lambda: c.getCounters().get("Cache.get.requests") == calls, 10,
                 what=f"summed counters reaching {calls}")
        assert c.getCounters()["Cache.get.errors.404"] == calls // 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
