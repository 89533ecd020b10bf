"""`glammp gateway`: the front door in a split deployment.

    glammp --config glammp.toml gateway [--port P] [--admin-port P] [--upstream Svc=host:port ...]

Reads `[gateway]` (see `gateway.config`); `--upstream` adds instances without a file, e.g.
`--upstream Cache=127.0.0.1:9101 --upstream Cache=127.0.0.1:9102`. SIGHUP re-reads the file.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gateway import process
from gateway.config import GatewayConfig
from services.core.config import ConfigError


def _config(args: argparse.Namespace) -> GatewayConfig:
    cfg = process.load_config(args.config)
    changes: dict[str, Any] = {}
    if args.port is not None:
        changes["port"] = args.port
    if args.admin_port is not None:
        changes["admin_port"] = args.admin_port
    if args.upstream:
        ups = {k: list(v) for k, v in cfg.upstreams.items()}
        for item in args.upstream:
            service, sep, address = item.partition("=")
            if not sep:
                raise ConfigError("--upstream", f"{item!r} is not Service=host:port")
            ups.setdefault(service, []).append(address)
        changes["upstreams"] = ups
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError("gateway", str(e)) from None
    return cfg


def cmd_gateway(args: argparse.Namespace) -> int:
    cfg = _config(args)

    def announce(thrift: tuple[str, int], admin: tuple[str, int] | None) -> None:
        line = f"glammp gateway listening on {thrift[0]}:{thrift[1]}"
        if admin:
            line += f" (admin http://{admin[0]}:{admin[1]}/)"
        print(line, flush=True)

    return process.run(cfg, reload=lambda: _config(args), on_ready=announce)


def add_commands(sub: Any) -> None:
    s = sub.add_parser("gateway", help="the gateway: routes callers to service instances")
    s.add_argument("--port", type=int, help="override [gateway] port")
    s.add_argument("--admin-port", type=int, help="override [gateway] admin_port")
    s.add_argument("--upstream", action="append", default=[],
                   help="Service=host:port, added to [gateway.upstreams] (repeatable)")
    s.set_defaults(func=cmd_gateway)
