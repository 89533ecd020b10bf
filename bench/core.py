"""Server core: base `getStatus` through glammp's core vs Thrift's stock threaded server.

Both serve framed binary with the accelerated protocol behind multiplexing ("Base:getStatus");
the stock one is TThreadedServer under gevent with TMultiplexedProcessor. Rounds alternate
between the two servers and the median is reported.
"""

from __future__ import annotations

import struct

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.TTransport import TMemoryBuffer

from bench.harness import Row, load, median, python_server
from glammp.base import Base

#: The goal from the foundation issue: glammp's core at 32 connections vs the stock server.
GOAL_32 = 1.5


def get_status_request() -> bytes:
    buf = TMemoryBuffer()
    Base.Client(TMultiplexedProtocol(TBinaryProtocol(buf), "Base")).send_getStatus()
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def rows(seconds: float, rounds: int) -> list[Row]:
    request = get_status_request()
    out = []
    for conns in (1, 32):
        results: dict[str, list[dict]] = {"glammp": [], "stock": []}
        for _ in range(rounds):
            for kind in ("glammp", "stock"):
                with python_server("bench.servers", kind) as (port, pid):
                    load(port, conns, 0.5, request)  # warm up
                    results[kind].append(load(port, conns, seconds, request, pid))
        g = median([r["rate"] for r in results["glammp"]])
        s = median([r["rate"] for r in results["stock"]])
        g_cpu = median([r["cpu_us_per_call"] for r in results["glammp"]])
        s_cpu = median([r["cpu_us_per_call"] for r in results["stock"]])
        errors = sum(r["errors"] for rs in results.values() for r in rs)
        out.append(Row(
            name=f"getStatus, {conns} connection{'s' if conns > 1 else ''}",
            glammp=g, baseline=s, unit="calls/s",
            baseline_name="stock TThreadedServer + TMultiplexedProcessor",
            goal=GOAL_32 if conns == 32 else None,
            notes=f"server CPU/call {g_cpu:.0f} µs vs {s_cpu:.0f} µs"
            + (f"; {errors} errors" if errors else ""),
        ))
    return out
