"""The glammp gateway: one front door for callers in every Thrift dialect, routing by
multiplexed service name to service instances, with typed errors for every failure.

Modules: `config` (the `[gateway]` section), `proxy` (the caller port, routing, limits,
forwarding), `upstream` (instance pools, health, balancing), `wire` (message headers,
generic translation, synthesized errors), `access` (rules), `limits` (rate limits, retry
budget), `backends` (backends' state for the status page), `admin` and `status_page` (the
admin HTTP port), `sockets` (I/O fast paths), `process` and `cli` (`glammp gateway`).
"""

from gateway.config import GatewayConfig
from gateway.proxy import Gateway

__all__ = ["Gateway", "GatewayConfig"]
