"""What a handler may know about the call it is serving.

The server sets one `CallContext` per request in a context variable; gevent gives every
greenlet its own context, and every connection is served by one greenlet, so
`current_call()` is always the request this greenlet is serving.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConnectionState:
    """Per-connection state a handler may keep (e.g. the cache's buffered oneway writes).

    `state` is a free dict; callbacks registered with `on_close` run, in order, when the
    connection ends (their exceptions are logged, not raised).
    """

    peer: str
    state: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], None]) -> None:
        self.closers.append(fn)


@dataclass
class CallContext:
    """The request being served: its id, deadline (a `time.monotonic()` instant) and
    connection, plus the THeader info headers when the caller sent any."""

    request_id: str
    service: str
    method: str
    deadline: float
    connection: ConnectionState
    headers: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "glammp_call", default=None
)


def current_call() -> CallContext | None:
    """The call this greenlet is serving, or None outside a request."""
    return _current.get()


def set_current(ctx: CallContext | None) -> None:
    _current.set(ctx)
