"""The glammp gateway: one front door for callers in every Thrift dialect, routing by
multiplexed service name to service instances, with typed errors for every failure.

Modules: `config` (the `[gateway]` section), `proxy` (the caller port, routing, limits,
forwarding), `upstream` (instance pools, health, balancing), `wire` (message headers,
generic translation, synthesized errors), `access` (rules), `limits` (rate limits, retry
budget), `backends` (backends' state for the status page), `admin` and `status_page` (the
admin HTTP port), `sockets` (I/O fast paths), `process` and `cli` (`glammp gateway`).

`wire`, `upstream` and `proxy` are compiled to C by mypyc when built
(`scripts/compile_gateway.py`, run by `make`); Python imports a compiled module before its
source, so one older than its source is refused here rather than run stale.
"""


def _refuse_stale_builds() -> None:
    import os
    from importlib.machinery import EXTENSION_SUFFIXES

    here = os.path.dirname(__file__)
    for built in os.listdir(here):
        for suffix in EXTENSION_SUFFIXES:
            source = os.path.join(here, built.removesuffix(suffix) + ".py")
            if (built.endswith(suffix) and os.path.exists(source)
                    and os.path.getmtime(os.path.join(here, built)) < os.path.getmtime(source)):
                raise ImportError(
                    f"gateway/{os.path.basename(source)} changed after it was compiled: run "
                    "`make compiled`, or `python scripts/compile_gateway.py --clean` to run "
                    "it as Python")


_refuse_stale_builds()

from gateway.config import GatewayConfig  # noqa: E402
from gateway.proxy import Gateway  # noqa: E402

__all__ = ["Gateway", "GatewayConfig"]
