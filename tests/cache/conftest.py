"""Fixtures for the cache tests: real memcached processes on free loopback ports, handlers
over them, and the PHP (pecl/memcached) peer in php_peer.php.

`memcacheds` is three memcached servers shared by a test module (flushed before each test
that asks for `servers`); `make_memcached()` starts a private one a test may kill.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.cache.local import DEFAULT_MEMORY_MB, memcached_argv
from services.cache.service import CacheConfig, CacheHandler, PoolConfig
from services.core.children import Child, free_port

PHP_PEER = os.path.join(os.path.dirname(__file__), "php_peer.php")
#: Bound on one PHP run, seconds.
PHP_TIMEOUT_S = 60

MakeHandler = Callable[..., CacheHandler]


def start_memcached(tmp: str, port: int | None = None, item_size: str | None = None,
                    memory_mb: int = DEFAULT_MEMORY_MB) -> Child:
    port = port or free_port()
    child = Child(f"memcached-{port}",
                  memcached_argv(port, item_size=item_size, memory_mb=memory_mb), "127.0.0.1",
                  port, log_path=os.path.join(tmp, f"memcached-{port}.log"))
    return child.start()


def raw_command(address: str, data: bytes, end: bytes = b"END\r\n") -> bytes:
    """Sends `data` straight to one memcached (no glammp code) and reads until `end`."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        out = b""
        while not out.endswith(end):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def raw_keys(address: str, keys: list[str]) -> set[str]:
    """Which of `keys` the memcached at `address` holds, asked directly."""
    held: set[str] = set()
    for i in range(0, len(keys), 100):
        reply = raw_command(address, b"get " + " ".join(keys[i : i + 100]).encode() + b"\r\n")
        for line in reply.split(b"\r\n"):
            if line.startswith(b"VALUE "):
                held.add(line.split()[1].decode())
    return held


def php(request: dict[str, Any]) -> dict[str, Any]:
    """Runs the pecl/memcached peer with one JSON request; its JSON answer."""
    out = subprocess.run(
        ["php", PHP_PEER], input=json.dumps(request).encode(), capture_output=True,
        timeout=PHP_TIMEOUT_S, check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def memcacheds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Child]]:
    tmp = str(tmp_path_factory.mktemp("memcached"))
    children = [start_memcached(tmp) for _ in range(3)]
    yield children
    for child in children:
        child.stop()


@pytest.fixture
def servers(memcacheds: list[Child]) -> list[str]:
    """host:port of the three shared memcacheds, flushed."""
    for child in memcacheds:
        assert raw_command(child.address, b"flush_all\r\n", end=b"OK\r\n") == b"OK\r\n"
    return [child.address for child in memcacheds]


@pytest.fixture
def make_memcached(tmp_path: Any) -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(port: int | None = None, item_size: str | None = None,
              memory_mb: int = DEFAULT_MEMORY_MB) -> Child:
        child = start_memcached(str(tmp_path), port, item_size, memory_mb)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def make_handler() -> Iterator[MakeHandler]:
    """make_handler(servers, **pool_options) or make_handler(pools={name: PoolConfig})."""
    made: list[CacheHandler] = []

    def build(servers: list[str] | None = None, pools: dict[str, PoolConfig] | None = None,
              cache: dict[str, Any] | None = None, **options: Any) -> CacheHandler:
        """`cache`: CacheConfig fields (e.g. gearman_servers)."""
        if pools is None:
            assert servers is not None
            pools = {"default": PoolConfig(servers=list(servers), **options)}
        handler = CacheHandler(CacheConfig(pools=pools, **(cache or {})))
        made.append(handler)
        return handler

    yield build
    for handler in made:
        handler.close()
