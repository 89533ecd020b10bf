"""A load generator: N connections, each sending one pre-encoded framed request at a time.

    python -m bench.loadgen HOST PORT CONNECTIONS SECONDS REQUEST_HEX

Each connection sends the request, reads one whole framed reply, checks that it is a REPLY
(not an EXCEPTION), counts it and sends the next, until SECONDS pass. Prints one JSON line:
{"calls": N, "errors": N, "seconds": S, "p50_us": ..., "p99_us": ...}.

It drives all connections from one epoll loop on non-blocking sockets, without gevent, so it
spends far less CPU per call than any Python server it measures: the server is what is
measured, not the generator.
"""

import json
import os
import select
import socket
import sys
import time

REPLY = b"\x80\x01\x00\x02"


def run(host: str, port: int, conns: int, seconds: float, request: bytes) -> dict:
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytearray] = {}
    sent_at: dict[int, float] = {}
    calls = errors = 0
    samples: list[float] = []
    for _ in range(conns):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        fd = s.fileno()
        socks[fd], bufs[fd] = s, bytearray()
        ep.register(fd, select.EPOLLIN)
    start = time.perf_counter()
    stop_at = start + seconds
    for fd, s in socks.items():
        sent_at[fd] = time.perf_counter()
        s.send(request)
    open_conns = len(socks)
    while open_conns:
        for fd, _ in ep.poll(1.0):
            s, buf = socks[fd], bufs[fd]
            data = s.recv(262144)
            if not data:
                raise ConnectionError("server closed a connection")
            buf += data
            if len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                continue
            now = time.perf_counter()
            if buf[4:8] == REPLY:
                calls += 1
            else:
                errors += 1
            if calls % 16 == 0:
                samples.append(now - sent_at[fd])
            del buf[: 4 + int.from_bytes(buf[:4], "big")]
            if now < stop_at:
                sent_at[fd] = now
                s.send(request)
            else:
                ep.unregister(fd)
                open_conns -= 1
    elapsed = time.perf_counter() - start
    for s in socks.values():
        s.close()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1e6 if samples else 0.0

    t = os.times()
    return {"calls": calls, "errors": errors, "seconds": elapsed,
            "p50_us": pct(0.5), "p99_us": pct(0.99),
            "loadgen_cpu_us_per_call": (t.user + t.system) / max(1, calls) * 1e6}


if __name__ == "__main__":
    host, port, conns, seconds, hexreq = sys.argv[1:6]
    print(json.dumps(run(host, int(port), int(conns), float(seconds), bytes.fromhex(hexreq))))
