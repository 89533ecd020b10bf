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
    #: Deadline timers by length, reused across this connection's (sequential) calls.
    timers: dict[float, Any] = field(default_factory=dict, repr=False)

    def on_close(self, fn: Callable[[], None]) -> None:
        self.closers.append(fn)


class CallContext:
    """The request being served: its id, deadline (a `time.monotonic()` instant) and
    connection, plus the THeader info headers when the caller sent any."""

    __slots__ = ("_request_id", "_make_id", "service", "method", "deadline", "connection",
                 "headers")

    def __init__(
        self,
        request_id: str | Callable[[], str],
        service: str,
        method: str,
        deadline: float,
        connection: ConnectionState,
        headers: dict[str, str] | None = None,
    ) -> None:
        # The id is made on first use: most calls never need one.
        self._request_id = request_id if isinstance(request_id, str) else None
        self._make_id = None if isinstance(request_id, str) else request_id
        self.service = service
        self.method = method
        self.deadline = deadline
        self.connection = connection
        self.headers = headers or {}

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            assert self._make_id is not None
            self._request_id = self._make_id()
        return self._request_id

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
