"""The base service (fb303 tradition), served on every glammp port.

`getStatus` is the process's life-cycle state (STARTING, ALIVE, STOPPING, STOPPED), lowered to
WARNING while any mounted handler's `health()` reports a problem (e.g. a backend down);
`getStatusDetails` says which. Counters come from the metrics, summed over every process that
serves the port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import services
from glammp.base.ttypes import Status

log = logging.getLogger(__name__)


class StatusBoard:
    """The process's life-cycle state and the handlers whose health it reports."""

    def __init__(self) -> None:
        self.state = Status.STARTING
        self.started_at = int(time.time())
        self.sources: list[tuple[str, Any]] = []

    def watch(self, name: str, handler: object) -> None:
        if hasattr(handler, "health"):
            self.sources.append((name, handler))

    def current(self) -> tuple[int, str]:
        """(Status, details). Health is only consulted while ALIVE."""
        if self.state != Status.ALIVE:
            return self.state, Status._VALUES_TO_NAMES[self.state].lower()
        problems = []
        for name, handler in self.sources:
            try:
                status, details = handler.health()
            except Exception as e:
                log.exception("health check of %s failed", name)
                status, details = Status.WARNING, f"health check failed: {e}"
            if status != Status.ALIVE:
                problems.append(f"{name}: {details}")
        if problems:
            return Status.WARNING, "; ".join(problems)
        return Status.ALIVE, ""


class BaseHandler:
    """Implements the Base service for one process."""

    def __init__(
        self,
        board: StatusBoard,
        counters: Callable[[], dict[str, int]],
        name: str = "glammp",
    ) -> None:
        self.board = board
        self.counters = counters
        self.name = name

    def getName(self) -> str:
        return self.name

    def getVersion(self) -> str:
        return services.__version__

    def getStatus(self) -> int:
        return self.board.current()[0]

    def getStatusDetails(self) -> str:
        return self.board.current()[1]

    def aliveSince(self) -> int:
        return self.board.started_at

    def getCounters(self) -> dict[str, int]:
        return self.counters()

    def getCounter(self, key: str) -> int:
        return self.counters().get(key, 0)

