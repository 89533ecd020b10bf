"""The gateway's admin HTTP port: the core's endpoints plus upstream state and a status page.

* `GET /` and `GET /status.html`: the status page (`gateway.status_page`), a self-contained
  HTML page that polls `/status.json` and draws its charts with inline SVG.
* `GET /status.json`: services, their instances and health, request and error counts by
  method and code, latency histograms (cumulative since start; the page takes differences),
  and the backends' state as the services report it (`gateway.backends`).
* `GET /metrics`: the core's Prometheus text plus `glammp_gateway_upstream_*` gauges
  (health, outstanding calls and pooled connections per instance) and the gateway's
  connection and in-flight gauges.
* `/status`, `/healthz`: as in `services.core.admin`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import services
from gateway import status_page
from gateway.proxy import Gateway
from glammp.base.ttypes import Status
from services.core import metrics as metrics_mod
from services.core.admin import AdminApp, StartResponse


def status_document(gw: Gateway) -> dict[str, Any]:
    """What the status page shows, as JSON-able data."""
    code, details = gw.board.current()
    snap = gw.metrics.snapshot()
    return {
        "status": Status._VALUES_TO_NAMES.get(code, str(code)),
        "details": details,
        "version": services.__version__,
        "alive_since": gw.board.started_at,
        "now": time.time(),
        "connections": len(gw.connections),
        "inflight": gw.inflight,
        "services": {
            name: {
                "healthy": cluster.healthy(),
                "instances": [i.snapshot() for i in cluster.instances],
            }
            for name, cluster in sorted(gw.clusters.items())
        },
        "buckets": list(metrics_mod.LATENCY_BUCKETS_S),
        "requests": snap["requests"],
        "latency": snap["latency"],
        "counters": snap["counters"],
        "backends": gw.backends.snapshot(),
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def gateway_prometheus(gw: Gateway) -> str:
    lines = [
        "# HELP glammp_gateway_upstream_up 1 when the instance takes calls (not ejected or "
        "draining).",
        "# TYPE glammp_gateway_upstream_up gauge",
    ]
    now = time.monotonic()
    rows = [(s, i) for s, c in sorted(gw.clusters.items()) for i in c.instances]
    for s, i in rows:
        labels = f'service="{_label(s)}",instance="{_label(i.address)}"'
        lines.append(f"glammp_gateway_upstream_up{{{labels}}} {int(i.eligible(now))}")
    lines += ["# HELP glammp_gateway_upstream_outstanding Calls waiting on the instance.",
              "# TYPE glammp_gateway_upstream_outstanding gauge"]
    for s, i in rows:
        labels = f'service="{_label(s)}",instance="{_label(i.address)}"'
        lines.append(f"glammp_gateway_upstream_outstanding{{{labels}}} {i.outstanding}")
    lines += ["# HELP glammp_gateway_upstream_connections Pooled connections to the instance.",
              "# TYPE glammp_gateway_upstream_connections gauge"]
    for s, i in rows:
        labels = f'service="{_label(s)}",instance="{_label(i.address)}"'
        lines.append(f"glammp_gateway_upstream_connections{{{labels}}} {len(i.links)}")
    lines += ["# HELP glammp_gateway_connections Caller connections open now.",
              "# TYPE glammp_gateway_connections gauge",
              f"glammp_gateway_connections {len(gw.connections)}",
              "# HELP glammp_gateway_inflight Calls being forwarded now.",
              "# TYPE glammp_gateway_inflight gauge",
              f"glammp_gateway_inflight {gw.inflight}"]
    return "\n".join(lines) + "\n"


class GatewayAdmin(AdminApp):
    """The core admin app with the gateway's pages added."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(gw.metrics.snapshot, gw.board.current, gw.board.started_at)
        self.gw = gw

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            if path in ("/", "/status.html"):
                return self._reply(start, "200 OK", "text/html; charset=utf-8",
                                   status_page.HTML.encode())
            if path == "/status.json":
                body = json.dumps(status_document(self.gw)).encode()
                return self._reply(start, "200 OK", "application/json", body)
            if path == "/metrics":
                body = (metrics_mod.render_prometheus(self.gw.metrics.snapshot())
                        + gateway_prometheus(self.gw)).encode()
                return self._reply(start, "200 OK", "text/plain; version=0.0.4", body)
        return super().__call__(environ, start)
