"""`glammp serve` end to end: the newcomer's command, as a real process with real backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from glammp.base.ttypes import Status
from glammp.cache.ttypes import StoreResult
from services.client import connect
from services.core.children import free_port, port_accepts, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def glammp_serve(tmp_path):
    port, admin = free_port(), free_port()
    cfg = tmp_path / "glammp.toml"
    cfg.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\n'
        f'[local]\ndata_dir = "{tmp_path / "data"}"\nmogilefs = false\n'
    )
    out = open(tmp_path / "stdout", "w+")  # noqa: SIM115
    err = open(tmp_path / "stderr", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "--config", str(cfg), "serve"],
        cwd=ROOT, stdout=out, stderr=err,
    )

    def ready() -> bool:
        out.seek(0)
        return "listening on" in out.read() or proc.poll() is not None

    try:
        wait_for(ready, 60, what="glammp serve announcing its port")
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
    except BaseException:
        proc.kill()
        proc.wait()
        out.close()
        err.close()
        raise
    yield proc, port, admin, out
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out.close()
    err.close()


def test_serve_answers_alive_and_serves_the_cache_then_stops_cleanly(glammp_serve):
    proc, port, admin, out = glammp_serve
    out.seek(0)
    assert f"listening on 127.0.0.1:{port}" in out.read()
    with connect("127.0.0.1", port, "Base") as base:
        assert base.getStatus() == Status.ALIVE
    with connect("127.0.0.1", port, "Cache") as cache:
        assert cache.put("newcomer", b"hello", None) == StoreResult.STORED
        assert cache.get("newcomer", None).value == b"hello"
    backends = [c for c in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                          text=True).stdout.split()]
    assert backends, "glammp serve started no local backend"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not port_accepts("127.0.0.1", port)
    for pid in backends:
        wait_for(lambda pid=pid: not _alive(pid), 10, what=f"backend {pid} exiting")


def test_backends_die_with_a_killed_serve(glammp_serve):
    proc, _, _, _ = glammp_serve
    backends = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert backends
    proc.kill()
    proc.wait()
    for pid in backends:
        wait_for(lambda pid=pid: not _alive(pid), 10, what=f"orphan {pid} exiting")


def _alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_admin_port_serves_metrics_and_status(glammp_serve):
    import json
    import urllib.request

    proc, port, admin, _ = glammp_serve
    with connect("127.0.0.1", port, "Base") as base:
        base.getStatus()
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] in ("ALIVE", "WARNING")
    assert doc["counters"]["Base.getStatus.requests"] >= 1
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'thrift_server_requests_total{service="Base",method="getStatus",code="0"}' in text


def test_call_command_prints_json(glammp_serve):
    _, port, _, _ = glammp_serve
    run = [sys.executable, "-m", "services.cli", "call", "--port", str(port)]
    out = subprocess.run(run + ["Base", "getStatus"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(Status.ALIVE)
    bad = subprocess.run(run + ["Cache", "get", "has space"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and '"code": 400' in bad.stderr


def test_bad_config_names_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nprot = 1\n")
    out = subprocess.run([sys.executable, "-m", "services.cli", "--config", str(cfg), "serve"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "server.prot" in out.stderr
