"""Fixtures for gateway tests: in-process gateways, upstreams in-process or as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.proxy import Gateway
from glammp.cache.ttypes import Item
from services.cache.local import memcached_argv
from services.core.children import Child, free_port, port_accepts, wait_for
from services.core.runner import Process
from services.jobs.local import gearmand_argv
from tests.core.dialects import client
from tests.core.testapp import MisbehavingCache, mount

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"


class TaggedCache(MisbehavingCache):
    """The test Cache handler; `get("tag")` answers which instance served it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.last_async: tuple[str, bytes] | None = None

    def get(self, key: str, opts: object) -> Item:
        if key == "tag":
            return Item(key=key, found=True, value=self.tag.encode())
        return super().get(key, opts)


@pytest.fixture
def upstreams(serve: Callable[..., Process]) -> Callable[..., list[tuple[str, TaggedCache]]]:
    """`upstreams(n)` starts n in-process Cache test servers; returns [(address, handler)]."""

    def start(n: int = 2, **server: Any) -> list[tuple[str, TaggedCache]]:
        out = []
        for i in range(n):
            handler = TaggedCache(f"u{i}")
            host, port = serve([mount(handler)], **server).server.address
            out.append((f"{host}:{port}", handler))
        return out

    return start


@pytest.fixture
def gateway() -> Iterator[Callable[..., Gateway]]:
    """`gateway(**config)` starts an in-process gateway on 127.0.0.1:0 (drained at the end)."""
    started: list[Gateway] = []

    def start(**overrides: Any) -> Gateway:
        cfg = GatewayConfig(**{"port": 0, "admin_port": -1, "access_log": False,
                               "health_interval_ms": 200, **overrides})
        cfg.validate()
        gw = Gateway(cfg)
        gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.drain(1.0)


class TestApp:
    """A tests.core.testapp server in its own process (so it can be killed or frozen)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TestApp:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.core.serve_testapp", str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc
        wait_for(lambda: port_accepts("127.0.0.1", self.port) or proc.poll() is not None, 30,
                 what="test upstream listening")
        assert proc.poll() is None, "the test upstream exited at start"
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def testapps() -> Iterator[Callable[[int], list[TestApp]]]:
    """`testapps(n)` starts n upstream processes; all are killed at the end."""
    apps: list[TestApp] = []

    def start(n: int) -> list[TestApp]:
        new = [TestApp() for _ in range(n)]
        for app in new:
            apps.append(app.start())
        return new

    yield start
    for app in apps:
        app.stop()


@dataclass
class Split:
    gateway: tuple[str, int]
    caches: list[Child]
    config: str
    memcached: str


def _glammp(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", "--config", config, *args]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    """The split deployment: memcached and gearmand, two `glammp cache` and two `glammp jobs`
    processes, and a `glammp gateway` process in front of them (one per test module that
    uses it); "hello" is stored in the cache."""
    d = str(tmp_path_factory.mktemp("split"))
    mc_port, gm_port, c1, c2, j1, j2, gw_port = (free_port() for _ in range(7))
    config = os.path.join(d, "glammp.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
admin_port = -1
[cache.pools.default]
servers = ["{HOST}:{mc_port}"]
[jobs]
servers = ["{HOST}:{gm_port}"]
state_db = "{os.path.join(d, 'jobs-state.sqlite')}"
[gateway]
admin_port = -1
[gateway.upstreams]
Cache = ["{HOST}:{c1}", "{HOST}:{c2}"]
Jobs = ["{HOST}:{j1}", "{HOST}:{j2}"]
""")
    children = [Child("memcached", memcached_argv(mc_port), HOST, mc_port),
                Child("gearmand", gearmand_argv(gm_port, HOST), HOST, gm_port,
                      os.path.join(d, "gearmand.log"))]
    children += [Child(f"cache{i}", _glammp(config, "cache", "--port", str(p)), HOST, p,
                       os.path.join(d, f"cache{i}.log")) for i, p in enumerate((c1, c2))]
    children += [Child(f"jobs{i}", _glammp(config, "jobs", "--port", str(p)), HOST, p,
                       os.path.join(d, f"jobs{i}.log")) for i, p in enumerate((j1, j2))]
    children.append(Child("gateway", _glammp(config, "gateway", "--port", str(gw_port)), HOST,
                          gw_port, os.path.join(d, "gateway.log")))
    try:
        for child in children:
            child.start(timeout_s=30)
        with client(HOST, gw_port, "framed-binary", "Cache") as c:
            c.put("hello", b"world", None)
        yield Split((HOST, gw_port), children[2:4], config, children[0].address)
    finally:
        for child in reversed(children):
            child.stop()
