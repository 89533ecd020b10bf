"""CLI subcommands: `mogilefsd` (tracker), `mogstored` (storage node), `mogile-dev` (dev setup).

Each command reads its section of the config file (`[mogilefsd]` / `[mogstored]`) with the
usual `GLAMMP__…` environment overrides, then applies command-line options, of which
`--option KEY=VALUE` (a TOML literal, repeatable) can set any field of the spec. The caller has
already monkey-patched gevent and set up logging. SIGTERM and SIGINT stop the server cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tomllib
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from services.core import config
from services.mogilefs.config import StorageSpec, TrackerSpec

log = logging.getLogger(__name__)


def _options(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise config.ConfigError(pair, "--option needs KEY=VALUE")
        out[key.strip()] = _literal(text)
    return out


def _literal(text: str) -> Any:
    """A TOML literal (`0.5`, `true`, `["a"]`, `"x"`), else the text itself, as config
    overrides from the environment are read."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section(args: argparse.Namespace, name: str, direct: dict[str, Any]) -> dict[str, Any]:
    raw = config.load(getattr(args, "config", None)).get(name, {})
    if not isinstance(raw, dict):
        raise config.ConfigError(name, "expected a table")
    raw = dict(raw)
    raw.update({k: v for k, v in direct.items() if v is not None})
    raw.update(_options(args.option))
    return raw


def tracker_spec(args: argparse.Namespace) -> TrackerSpec:
    raw = _section(args, "mogilefsd", {"host": args.host, "port": args.port,
                                       "db_path": args.db_path})
    return config.parse(TrackerSpec, raw, "mogilefsd")


def storage_spec(args: argparse.Namespace) -> StorageSpec:
    raw = _section(args, "mogstored", {"host": args.host, "port": args.port,
                                       "docroot": args.docroot,
                                       "devices": args.device or None})
    return config.parse(StorageSpec, raw, "mogstored")


def _serve(server: Any, what: str) -> int:
    """Starts `server` (a Tracker or StorageNode), logs where it listens, and runs until
    SIGTERM/SIGINT stop it."""
    def stop() -> None:
        log.info("stopping")
        gevent.spawn(server.stop)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    server.start()
    log.info("%s listening on %s:%d", what, server.spec.host, server.port)
    server.server.serve_forever()
    return 0


def run_tracker(args: argparse.Namespace) -> int:
    from services.mogilefs.tracker import Tracker

    spec = tracker_spec(args)
    return _serve(Tracker(spec), f"mogilefsd (db {spec.db_path.split('@')[-1]})")


def run_storage(args: argparse.Namespace) -> int:
    from services.mogilefs.storage import StorageNode

    spec = storage_spec(args)
    return _serve(StorageNode(spec), f"mogstored (docroot {spec.docroot})")


def run_dev(args: argparse.Namespace) -> int:
    from services.mogilefs.devcluster import DevCluster

    # Handlers first: a SIGTERM while the children start must still stop them, not orphan them.
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    cluster = DevCluster(os.path.abspath(args.data_dir), tracker_port=args.port,
                         domain=args.domain)
    try:
        cluster.start()
        print(f"mogile-dev: tracker 127.0.0.1:{cluster.tracker_port}, domain {args.domain}, "
              f"data in {cluster.data_dir}", flush=True)
        stopped.wait()
    finally:
        cluster.stop()
    return 0


def _common(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    # SUPPRESS: when absent here, glammp's global `--config` (parsed before) is kept.
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="TOML config file (also accepted before the subcommand)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="set any config field (TOML literal); repeatable")
    p.set_defaults(func=func)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds `mogilefsd`, `mogstored` and `mogile-dev` to the glammp CLI."""
    p = sub.add_parser("mogilefsd", help="run a MogileFS-compatible tracker")
    _common(p, run_tracker)
    p.add_argument("--db-path", help="SQLite database file, or a postgresql:// URL")
    p = sub.add_parser("mogstored", help="run a MogileFS storage node")
    _common(p, run_storage)
    p.add_argument("--docroot", help="directory holding devN/ directories")
    p.add_argument("--device", type=int, action="append", help="device id to create; repeatable")
    p = sub.add_parser("mogile-dev", help="tracker + 2 storage nodes (2 devices each) + domain")
    p.add_argument("--data-dir", default="mogile-dev", help="where databases and files live")
    p.add_argument("--port", type=int, default=7001, help="tracker port (0: any free port)")
    p.add_argument("--domain", default="glammp", help="domain to create")
    p.set_defaults(func=run_dev)

