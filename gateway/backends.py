"""What the services behind the gateway see of their backends, for the status page.

Every `INTERVAL_S` a `BackendWatch` asks one healthy instance of each known service, through
the gateway's own upstream pools, for its backends' state, using the generated clients:

* Cache: `stats("", default pool)`: per memcached server, items, bytes, hits, misses,
  connections and uptime;
* Jobs: `functions()`: per Gearman function, queued and running jobs and workers;
* Filestore: `domains()`: MogileFS domains and their storage classes.

Answers are kept as JSON-able data (`snapshot()`); a failure is kept as its message. The
calls are ordinary upstream calls with a `TIMEOUT_S` deadline; they never block callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TException
from thrift.transport.TTransport import TMemoryBuffer

from gateway import upstream, wire
from services.client import service_module, to_json

log = logging.getLogger(__name__)

#: How often backends are asked, in seconds.
INTERVAL_S = 5.0
#: How long one question may take, in seconds.
TIMEOUT_S = 2.0
#: Memcached stats shown per server.
MEMCACHED_STATS = ("curr_items", "bytes", "get_hits", "get_misses", "curr_connections",
                   "uptime", "version")


def call(cluster: upstream.Cluster, method: str, *args: Any) -> Any:
    """Calls `method` of the cluster's service on one instance with the generated client;
    raises what the client raises, or upstream.NotSent / LostAfterSend / gevent.Timeout."""
    module = service_module(cluster.service)
    out = TMemoryBuffer()
    client = module.Client(TMultiplexedProtocol(TBinaryProtocol(out), cluster.service))
    getattr(client, f"send_{method}")(*args)
    request = out.getvalue()
    h = wire.parse_binary(request)
    tried: list[upstream.Instance] = []
    reply = None
    with gevent.Timeout(TIMEOUT_S):
        while reply is None:
            inst = cluster.pick(tried)
            if inst is None:
                raise upstream.NotSent(f"no healthy instance of {cluster.service}")
            try:
                reply = inst.call(h.mtype, h.name, memoryview(request)[h.body_at:], False)
            except upstream.NotSent:
                tried.append(inst)
    reader = module.Client(TBinaryProtocol(TMemoryBuffer(reply)))
    return getattr(reader, f"recv_{method}")()


def _cache(cluster: upstream.Cluster) -> dict[str, Any]:
    stats = call(cluster, "stats", "", None)
    return {"memcached": {server: {k: values.get(k, "") for k in MEMCACHED_STATS}
                          for server, values in sorted(stats.items())}}


def _jobs(cluster: upstream.Cluster) -> dict[str, Any]:
    return {"functions": [to_json(f) for f in call(cluster, "functions")]}


def _filestore(cluster: upstream.Cluster) -> dict[str, Any]:
    return {"domains": [{"name": d.name, "classes": len(d.classes or [])}
                        for d in call(cluster, "domains")]}


PROBES: dict[str, Callable[[upstream.Cluster], dict[str, Any]]] = {
    "Cache": _cache, "Jobs": _jobs, "Filestore": _filestore,
}


class BackendWatch:
    """Polls the backends' state of every known service behind the gateway."""

    def __init__(self, clusters: Callable[[], dict[str, upstream.Cluster]]) -> None:
        self.clusters = clusters
        self.state: dict[str, dict[str, Any]] = {}
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            self.poll()
            gevent.sleep(INTERVAL_S)

    def poll(self) -> None:
        """Asks every known service once (concurrently)."""
        jobs = {name: gevent.spawn(self._ask, name, cluster)
                for name, cluster in self.clusters().items() if name in PROBES}
        gevent.joinall(list(jobs.values()))
        self.state = {name: g.value for name, g in jobs.items() if g.value is not None}

    @staticmethod
    def _ask(name: str, cluster: upstream.Cluster) -> dict[str, Any]:
        try:
            got = PROBES[name](cluster)
            got["ok"] = True
        except (TException, upstream.NotSent, upstream.LostAfterSend, gevent.Timeout,
                wire.WireError, OSError) as e:
            got = {"ok": False, "error": str(e) or type(e).__name__}
        got["at"] = time.time()
        return got

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.state)
