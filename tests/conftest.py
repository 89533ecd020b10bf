"""Fixtures every test folder may use: in-process glammp servers and Thrift clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.core.dispatch import Mount
from services.core.runner import Process, ServeSpec
from services.core.server import ServerConfig


@pytest.fixture
def serve() -> Iterator[Callable[..., Process]]:
    """Starts an in-process server for the given mounts on 127.0.0.1:0.

    `serve(mounts, **server_config)` returns the running `Process`; its `server.address` is
    where it listens. Every server started is drained and stopped at the end of the test.
    """
    started: list[Process] = []

    def start(mounts: list[Mount], **overrides: Any) -> Process:
        cfg = ServerConfig(**{"port": 0, "admin_port": -1, **overrides})
        proc = Process(ServeSpec(cfg, lambda: list(mounts)))
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
