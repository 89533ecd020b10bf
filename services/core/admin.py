"""The admin HTTP port: Prometheus metrics and a JSON status, for people and monitors.

* `GET /metrics`: Prometheus text format (`services.core.metrics`).
* `GET /status`: JSON with the status, its details, the version, start time and counters.
* `GET /healthz`: 200 "ok" while ALIVE or WARNING, 503 otherwise (for load balancers).

Bound to loopback by default (`[server] admin_host`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import WSGIServer

import services
from glammp.base.ttypes import Status
from services.core import metrics as metrics_mod

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class AdminApp:
    """A WSGI app over a metrics source and a status source."""

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        status: Callable[[], tuple[int, str]],
        started_at: int,
    ) -> None:
        self.snapshot = snapshot
        self.status = status
        self.started_at = started_at

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self._reply(start, "405 Method Not Allowed", "text/plain", b"GET only\n")
        if path == "/metrics":
            body = metrics_mod.render_prometheus(self.snapshot()).encode()
            return self._reply(start, "200 OK", "text/plain; version=0.0.4", body)
        if path == "/status":
            code, details = self.status()
            doc = {
                "status": Status._VALUES_TO_NAMES.get(code, str(code)),
                "details": details,
                "version": services.__version__,
                "alive_since": self.started_at,
                "counters": metrics_mod.fb303_counters(self.snapshot()),
            }
            return self._reply(start, "200 OK", "application/json",
                               json.dumps(doc, indent=1).encode())
        if path == "/healthz":
            code, details = self.status()
            ok = code in (Status.ALIVE, Status.WARNING)
            return self._reply(start, "200 OK" if ok else "503 Service Unavailable",
                               "text/plain", (b"ok\n" if ok else details.encode() + b"\n"))
        return self._reply(start, "404 Not Found", "text/plain", b"not found\n")

    @staticmethod
    def _reply(start: StartResponse, status: str, ctype: str, body: bytes) -> list[bytes]:
        start(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]


def serve_admin(host: str, port: int, app: AdminApp) -> WSGIServer:
    """Starts the admin server (port 0 picks a free port) and returns it."""
    server = WSGIServer((host, port), app, log=None, error_log=log)
    server.start()
    return server
