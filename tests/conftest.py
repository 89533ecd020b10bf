"""Fixtures every test folder may use: in-process glammp servers and Thrift clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    """In CI (`CI=true`, as .ci/run is run) a test skipped because something is "not
    installed" fails instead: CI installs everything, so such a skip is a missing install step
    that would otherwise pass unseen."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and "not installed" in str(
        report.longrepr
    ):
        report.outcome = "failed"
