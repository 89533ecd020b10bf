"""Running the gateway as a process: Thrift port, admin port, signals.

* SIGTERM / SIGINT: drain (stop accepting, finish in-flight calls within `drain_grace_ms`,
  close), then exit 0 (1 when calls were cut short).
* SIGHUP: read the config file again and apply it to the running gateway (upstreams,
  limits, rules, deadlines); established caller connections are kept. A config that fails
  to parse is logged and ignored; the old one stays in force.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import gevent
import gevent.event

from gateway.admin import GatewayAdmin
from gateway.config import GatewayConfig
from gateway.proxy import Gateway
from services.core import config as config_mod
from services.core.admin import serve_admin

log = logging.getLogger(__name__)


def load_config(path: str | None) -> GatewayConfig:
    """The `[gateway]` section of the config file (plus GLAMMP__GATEWAY__* overrides)."""
    raw = config_mod.load(path)
    return config_mod.parse(GatewayConfig, raw.get("gateway"), "gateway")


def run(
    config: GatewayConfig,
    reload: Callable[[], GatewayConfig] | None = None,
    on_ready: Callable[[tuple[str, int], tuple[str, int] | None], None] | None = None,
) -> int:
    """Serves until SIGTERM/SIGINT; `reload()` gives the config to apply on SIGHUP."""
    gw = Gateway(config)
    gw.start()
    admin = None
    if config.admin_port >= 0:
        admin = serve_admin(config.admin_host, config.admin_port, GatewayAdmin(gw))
    if on_ready is not None:
        on_ready(gw.address, admin.address[:2] if admin else None)
    stop = gevent.event.Event()

    def hup() -> None:
        if reload is None:
            return
        try:
            new = reload()
        except config_mod.ConfigError as e:
            log.error("config reload refused, keeping the old one: %s", e)
            return
        gw.reload(new)
        log.info("config reloaded", extra={"services": ",".join(sorted(new.upstreams))})

    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    handlers.append(gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(hup)))
    try:
        stop.wait()
    finally:
        for h in handlers:
            h.cancel()
    log.info("draining")
    clean = gw.drain()
    if admin is not None:
        admin.stop()
    log.info("stopped")
    return 0 if clean else 1
