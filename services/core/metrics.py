"""Request metrics: counters and latency histograms, cheap enough for every call.

Each process counts in plain dicts (no locks: one gevent hub per process). A snapshot is a
JSON-able dict; snapshots of several processes are added with `merge`, which is how a server
running N processes on one port reports one set of numbers (each worker writes its snapshot
to a shared run directory; see `services.core.server`).

Exported names (Prometheus text format):

* `thrift_server_requests_total{service,method,code}`: calls answered; code 0 is success,
  otherwise the ServiceError code.
* `thrift_server_latency_seconds{service,method}`: histogram of the time from the arguments
  being read to the result being ready.
* `thrift_server_active_requests`: requests running now.
* `glammp_<name>_total`: other counters (connections, refused frames, unknown methods ...).
* `glammp_handler_value{name}`: what the mounted handlers report through `counters()`
  (e.g. `cache.oneway.sent`), under the same names in fb303's getCounters.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable
from typing import Any

#: Upper bounds of the latency histogram buckets, in seconds.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)


class Metrics:
    """Counters of one process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (service, method) -> [bucket counts ..., +Inf count, sum of seconds]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.counters: dict[str, int] = {}
        self.active = 0

    def observe(self, labels: tuple[str, str], code: int, seconds: float) -> None:
        key = (labels[0], labels[1], code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(labels)
        if hist is None:
            hist = self.latency[labels] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        hist[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        hist[-1] += seconds

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def count_unknown(self) -> None:
        self.incr("unknown_method")

    def snapshot(self, handler: dict[str, int] | None = None) -> dict[str, Any]:
        """This process's numbers; `handler` adds the handlers' own counters."""
        return {
            "requests": [[s, m, c, n] for (s, m, c), n in self.requests.items()],
            "latency": [[s, m, h] for (s, m), h in self.latency.items()],
            "counters": dict(self.counters),
            "handler": dict(handler or {}),
            "active": self.active,
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Adds the snapshots of several processes into one."""
    requests: dict[tuple[str, str, int], int] = {}
    latency: dict[tuple[str, str], list[float]] = {}
    counters: dict[str, int] = {}
    handler: dict[str, int] = {}
    active = 0
    for snap in snapshots:
        for k, v in snap.get("handler", {}).items():
            handler[k] = handler.get(k, 0) + v
        for s, m, c, n in snap["requests"]:
            requests[(s, m, c)] = requests.get((s, m, c), 0) + n
        for s, m, h in snap["latency"]:
            cur = latency.get((s, m))
            if cur is None:
                latency[(s, m)] = list(h)
            else:
                latency[(s, m)] = [a + b for a, b in zip(cur, h, strict=True)]
        for k, v in snap["counters"].items():
            counters[k] = counters.get(k, 0) + v
        active += snap.get("active", 0)
    return {
        "requests": [[s, m, c, n] for (s, m, c), n in sorted(requests.items())],
        "latency": [[s, m, h] for (s, m), h in sorted(latency.items())],
        "counters": counters,
        "handler": handler,
        "active": active,
    }


def write_snapshot(directory: str, snapshot: dict[str, Any]) -> None:
    """Writes this process's snapshot to `directory` atomically (rename)."""
    path = os.path.join(directory, f"metrics-{os.getpid()}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(snapshot, f)
    os.replace(tmp, path)


def read_snapshots(directory: str) -> list[dict[str, Any]]:
    """Every process snapshot in `directory` (files that vanish or are torn are skipped)."""
    out = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("metrics-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def fb303_counters(snap: dict[str, Any]) -> dict[str, int]:
    """Flat counters for fb303's getCounters: `<service>.<method>.requests`, `.errors`, and
    `glammp.<counter>`."""
    out: dict[str, int] = {}
    for s, m, c, n in snap["requests"]:
        key = f"{s}.{m}"
        out[f"{key}.requests"] = out.get(f"{key}.requests", 0) + n
        if c:
            out[f"{key}.errors"] = out.get(f"{key}.errors", 0) + n
            out[f"{key}.errors.{c}"] = out.get(f"{key}.errors.{c}", 0) + n
    for k, v in snap["counters"].items():
        out[f"glammp.{k}"] = v
    out.update(snap.get("handler", {}))
    out["glammp.active_requests"] = snap.get("active", 0)
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(snap: dict[str, Any]) -> str:
    """The snapshot in Prometheus text exposition format 0.0.4."""
    lines = [
        "# HELP thrift_server_requests_total Thrift calls answered, by ServiceError code (0 = ok).",
        "# TYPE thrift_server_requests_total counter",
    ]
    for s, m, c, n in snap["requests"]:
        lines.append(
            f'thrift_server_requests_total{{service="{_label(s)}",method="{_label(m)}",'
            f'code="{c}"}} {n}'
        )
    lines += [
        "# HELP thrift_server_latency_seconds Time from request read to result ready.",
        "# TYPE thrift_server_latency_seconds histogram",
    ]
    for s, m, h in snap["latency"]:
        labels = f'service="{_label(s)}",method="{_label(m)}"'
        cumulative = 0.0
        for bound, count in zip(LATENCY_BUCKETS_S, h, strict=False):
            cumulative += count
            lines.append(f'thrift_server_latency_seconds_bucket{{{labels},le="{bound}"}} '
                         f"{cumulative:.0f}")
        cumulative += h[len(LATENCY_BUCKETS_S)]
        lines.append(f'thrift_server_latency_seconds_bucket{{{labels},le="+Inf"}} {cumulative:.0f}')
        lines.append(f"thrift_server_latency_seconds_sum{{{labels}}} {h[-1]}")
        lines.append(f"thrift_server_latency_seconds_count{{{labels}}} {cumulative:.0f}")
    lines += [
        "# HELP thrift_server_active_requests Requests running now.",
        "# TYPE thrift_server_active_requests gauge",
        f"thrift_server_active_requests {snap.get('active', 0)}",
    ]
    for k, v in sorted(snap["counters"].items()):
        lines.append(f"# TYPE glammp_{k}_total counter")
        lines.append(f"glammp_{k}_total {v}")
    if snap.get("handler"):
        lines.append("# HELP glammp_handler_value Counters and gauges the services report.")
        lines.append("# TYPE glammp_handler_value untyped")
        for k, v in sorted(snap["handler"].items()):
            lines.append(f'glammp_handler_value{{name="{_label(k)}"}} {v}')
    return "\n".join(lines) + "\n"
