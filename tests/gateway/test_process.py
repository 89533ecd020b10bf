"""`glammp gateway` as a process: SIGHUP reloads without dropping connections, SIGTERM drains,
and the admin port serves metrics and the status document."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import gevent
import pytest

from glammp.base.ttypes import Status
from glammp.common.ttypes import ServiceError
from services.core.children import free_port, port_accepts, wait_for
from tests.core.dialects import client
from tests.gateway.conftest import ROOT


def _write(path: str, port: int, admin: int, upstreams: list[str], extra: str = "") -> None:
    with open(path + ".tmp", "w") as f:
        f.write(f"[gateway]\nport = {port}\nadmin_port = {admin}\nhealth_interval_ms = 200\n"
                f"{extra}\n[gateway.upstreams]\nCache = {json.dumps(upstreams)}\n")
    os.replace(path + ".tmp", path)


@pytest.fixture
def gateway_process(tmp_path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(upstreams: list[str], extra: str = "") -> tuple[subprocess.Popen, int, int, str]:
        port, admin = free_port(), free_port()
        config = str(tmp_path / "gateway.toml")
        _write(config, port, admin, upstreams, extra)
        with open(tmp_path / "gw.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "--config", config, "gateway"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        procs.append(proc)
        wait_for(lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None, 30,
                 what="gateway listening")
        assert proc.poll() is None
        return proc, port, admin, config

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _pid(c) -> int:
    return int(c.get("pid", None).value)


def test_sighup_reloads_upstreams_without_dropping_connections(gateway_process, testapps):
    a, b = testapps(2)
    proc, port, admin, config = gateway_process([a.address])
    slow: list[bytes] = []

    def slow_call() -> None:
        with client("127.0.0.1", port, "framed-binary", "Cache") as s:
            slow.append(s.get("sleep:0.8", None).value)

    with client("127.0.0.1", port, "framed-binary", "Cache") as c:
        assert _pid(c) == a.proc.pid
        in_flight = gevent.spawn(slow_call)
        wait_for(lambda: _inflight(admin) == 1, 10, what="a call in flight on the old upstream")
        _write(config, port, admin, [b.address])
        proc.send_signal(signal.SIGHUP)
        # The same connection now reaches the new instance.
        wait_for(lambda: _pid(c) == b.proc.pid, 10, what="calls routed to the new upstream")
        assert _pid(c) == b.proc.pid
        # A broken config is refused and the running one stays.
        with open(config, "w") as f:
            f.write("[gateway]\nport = 'not a number'\n")
        proc.send_signal(signal.SIGHUP)
        gevent.sleep(0.3)
        assert proc.poll() is None
        assert _pid(c) == b.proc.pid
    # The call in flight on the removed upstream was let finish.
    assert in_flight.get(timeout=10) is None and slow == [b"sleep:0.8"]


def test_sigterm_drains_in_flight_calls(gateway_process, testapps):
    a, = testapps(1)
    proc, port, admin, _ = gateway_process([a.address])
    results: list[bytes] = []

    def slow() -> None:
        with client("127.0.0.1", port, "framed-binary", "Cache") as c:
            results.append(c.get("sleep:0.6", None).value)

    with client("127.0.0.1", port, "framed-binary", "Base") as idle:
        assert idle.getStatus() == Status.ALIVE
        callers = [gevent.spawn(slow) for _ in range(3)]
        wait_for(lambda: _inflight(admin) == 3, 10, what="three calls in flight")
        proc.send_signal(signal.SIGTERM)
        gevent.joinall(callers, timeout=10, raise_error=True)
    assert results == [b"sleep:0.6"] * 3
    assert proc.wait(timeout=15) == 0
    assert not port_accepts("127.0.0.1", port)


def _inflight(admin: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status.json", timeout=10) as r:
        return int(json.loads(r.read())["inflight"])


def test_admin_port_serves_metrics_status_and_the_page(gateway_process, testapps, tmp_path):
    a, = testapps(1)
    proc, port, admin, _ = gateway_process([a.address])
    with client("127.0.0.1", port, "framed-binary", "Cache") as c:
        for i in range(5):
            c.get(f"k{i}", None)
        with pytest.raises(ServiceError):
            c.get("missing", None)
    base = f"http://127.0.0.1:{admin}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'thrift_server_requests_total{service="Cache",method="get",code="0"} 5' in metrics
    # The upstream's ServiceError code is counted without decoding the reply.
    assert 'thrift_server_requests_total{service="Cache",method="get",code="404"} 1' in metrics
    assert f'glammp_gateway_upstream_up{{service="Cache",instance="{a.address}"}} 1' in metrics
    with urllib.request.urlopen(f"{base}/status.json", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "ALIVE"
    assert doc["services"]["Cache"]["instances"][0]["address"] == a.address
    assert doc["services"]["Cache"]["instances"][0]["state"] == "up"
    with urllib.request.urlopen(f"{base}/", timeout=10) as r:
        page = r.read().decode()
    assert "<svg" in page or "createElementNS" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    # The access log: one JSON line per call, with a request id.
    lines = [json.loads(line) for line in (tmp_path / "gw.log").read_text().splitlines()
             if line.startswith("{")]
    calls = [x for x in lines if x.get("logger") == "gateway.access"]
    assert len(calls) == 6 and all(x["request_id"] and x["service"] == "Cache" for x in calls)
    assert sorted(x["code"] for x in calls) == [0, 0, 0, 0, 0, 404]
