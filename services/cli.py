"""The `glammp` command.

    glammp serve                 all-in-one: every service on one port, local backends started
    glammp cache|jobs|filestore  one service on its own port (split deployment)
    glammp call SERVICE METHOD [JSON ARG ...]
                                 calls a method and prints the result as JSON
    glammp status                a server's status and counters
    glammp worker ...            Gearman workers (services.jobs)
    glammp mogilefsd|mogstored   the MogileFS-compatible tracker and storage node

Global options come before the subcommand: `glammp --config glammp.toml serve`. The config
file may also be named by `GLAMMP_CONFIG`.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from services.core import config as config_mod  # noqa: E402
from services.core import logs  # noqa: E402

log = logging.getLogger("glammp")

#: Modules that add their own subcommands with `add_commands(subparsers)`, when present.
COMMAND_MODULES = ("services.jobs.cli", "services.mogilefs.cli", "services.filestore.cli",
                   "gateway.cli", "bench.cli")


def _load(args: argparse.Namespace) -> dict[str, Any]:
    return config_mod.load(args.config)


def _announce(service: str, thrift: tuple[str, int], admin: tuple[str, int] | None) -> None:
    line = f"glammp {service} listening on {thrift[0]}:{thrift[1]}"
    if admin:
        line += f" (admin http://{admin[0]}:{admin[1]}/status)"
    print(line, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from services import app
    from services.core.runner import ServeSpec, run
    from services.core.server import ServerConfig

    raw = _load(args)
    server = config_mod.parse(ServerConfig, raw.get("server"), "server")
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    sections = list(app.SERVICES) if args.command == "serve" else [args.command]
    local = None
    if args.command == "serve":
        local = app.LocalBackends(config_mod.parse(app.LocalConfig, raw.get("local"), "local"))
        local.start(raw)
    try:
        spec = ServeSpec(
            config=server,
            mounts=app.mounts_factory(sections, raw),
            on_ready=lambda t, a: _announce(args.command, t, a),
        )
        return run(spec)
    finally:
        if local is not None:
            local.stop()


def cmd_call(args: argparse.Namespace) -> int:
    from glammp.common.ttypes import ServiceError
    from services.client import call_json, connect, to_json

    values = []
    for text in args.args:
        try:
            values.append(json.loads(text))
        except ValueError:
            values.append(text)  # a bare word is a string
    with connect(args.host, args.port, args.service, args.timeout) as client:
        try:
            result = call_json(client, args.service, args.method, values)
        except ServiceError as e:
            print(json.dumps({"ServiceError": to_json(e)}, indent=1), file=sys.stderr)
            return 2
    print(json.dumps(result, indent=1))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from glammp.base.ttypes import Status
    from services.client import connect

    with connect(args.host, args.port, "Base", args.timeout) as client:
        status = client.getStatus()
        details = client.getStatusDetails()
        counters = client.getCounters() if args.counters else {}
    print(Status._VALUES_TO_NAMES.get(status, status), details)
    for key in sorted(counters):
        print(f"{key} {counters[key]}")
    return 0 if status in (Status.ALIVE, Status.WARNING) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glammp", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default=os.environ.get("GLAMMP_CONFIG"),
                   help="TOML configuration file (default: $GLAMMP_CONFIG, else built-in defaults)")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="all-in-one: every service on one port, local backends")
    s.add_argument("--port", type=int, help="override [server] port")
    s.set_defaults(func=cmd_serve)
    for name in ("cache", "jobs", "filestore"):
        s = sub.add_parser(name, help=f"serve the {name} service alone")
        s.add_argument("--port", type=int, help="override [server] port")
        s.set_defaults(func=cmd_serve)

    for name, func, hlp in (("call", cmd_call, "call a method, print JSON"),
                            ("status", cmd_status, "print a server's status")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, default=9090)
        s.add_argument("--timeout", type=float, default=10.0, help="seconds")
        s.set_defaults(func=func)
        if name == "call":
            s.add_argument("service", help="Base, Cache, Jobs or Filestore")
            s.add_argument("method")
            s.add_argument("args", nargs="*", help="arguments as JSON (bare words are strings)")
        else:
            s.add_argument("--counters", action="store_true")

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue
            raise
        module.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return int(args.func(args) or 0)
    except config_mod.ConfigError as e:
        print(f"glammp: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
