"""The tracker server: the MogileFS line protocol on a gevent StreamServer, plus its workers.

One greenlet per connection reads request lines and answers them strictly in order, so
pipelined requests get their replies in the order sent. Empty lines are skipped; garbage gets
`ERR unknown_command` and the connection stays open. A line longer than `max_line_bytes` closes
the connection (the only request a tracker refuses to read). A reply that cannot be written
within WRITE_TIMEOUT_S (a client that stopped reading) closes the connection.

A command that fails with an unexpected exception answers `ERR failure Operation+failed`; the
traceback goes to the log, never to the wire. A command runs to completion even when the client
has gone; its reply is then dropped.

`!` lines are admin commands answered with lines ending in `.`: `!version`, `!stats`; anything
else gets the help text. With `admin_clients` set, `!` lines and the commands in
`catalog.ADMIN_COMMANDS` from other addresses get `ERR access_denied`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

import gevent
from gevent.server import StreamServer

from services.mogilefs import wire
from services.mogilefs.catalog import ADMIN_COMMANDS, Catalog, uptime
from services.mogilefs.config import TrackerSpec
from services.mogilefs.deletion import Deleter
from services.mogilefs.monitor import Monitor
from services.mogilefs.namespace import Namespace
from services.mogilefs.replication import Replicator
from services.mogilefs.state import CommandError, TrackerState

log = logging.getLogger(__name__)

VERSION = "2.73"
#: Seconds a reply may take to be written before the connection is closed (slow reader).
WRITE_TIMEOUT_S = 120.0
_HELP = ["Commands: !version !stats"]


class Tracker:
    """A tracker serving `spec.host:spec.port` with its monitor, replicator and deleter."""

    def __init__(self, spec: TrackerSpec) -> None:
        self.spec = spec
        self.state = TrackerState(spec)
        self.handlers = {**Catalog(self.state).handlers(), **Namespace(self.state).handlers()}
        self.admin_nets = [ipaddress.ip_network(n, strict=False) for n in spec.admin_clients]
        self.server = StreamServer((spec.host, spec.port), self._serve)
        self.monitor = Monitor(self.state)
        self.replicator = Replicator(self.state)
        self.deleter = Deleter(self.state)
        self.state.monitor_round = self.monitor.run_round

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def start(self) -> None:
        """Starts the workers and the listener; the monitor's first round runs in the background,
        so devices become writeable a moment after start (create_device forces a round)."""
        self.state.store.release_strays()
        self.monitor.start()
        self.replicator.start()
        self.deleter.start()
        self.server.start()

    def serve_forever(self) -> None:
        self.start()
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for worker in (self.monitor, self.replicator, self.deleter):
            worker.stop()
        self.state.close()

    # -- connections -----------------------------------------------------------------------

    def _serve(self, sock: socket.socket, address: Any) -> None:
        client = str(address[0])
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(self.spec.max_line_bytes + 1)
                if not line:
                    return
                if not line.endswith(b"\n"):
                    if len(line) > self.spec.max_line_bytes:
                        log.warning("closing %s: request line over %d bytes", client,
                                    self.spec.max_line_bytes)
                    return
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                reply = self.answer(line, client)
                with gevent.Timeout(WRITE_TIMEOUT_S):
                    sock.sendall(reply)
        except (OSError, gevent.Timeout):
            return
        finally:
            reader.close()
            sock.close()

    def allowed(self, client: str) -> bool:
        if not self.admin_nets:
            return True
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(addr in net for net in self.admin_nets)

    def answer(self, line: bytes, client: str) -> bytes:
        """The reply bytes for one request line (without its line end)."""
        self.state.queries += 1
        if line.startswith(b"!"):
            if not self.allowed(client):
                return wire.encode_err("access_denied", "Access denied")
            return self._admin(line[1:].strip().decode("latin-1").lower())
        parsed = wire.parse_line(line)
        if parsed is None or parsed[0] not in self.handlers:
            return wire.encode_err("unknown_command")
        command, args = parsed
        callid = args.raw("callid") if args.has("callid") else None
        if command in ADMIN_COMMANDS and not self.allowed(client):
            return wire.encode_err("access_denied", "Access denied", callid)
        self.state.processing += 1
        try:
            reply = self.handlers[command](args, client)
        except CommandError as e:
            return wire.encode_err(e.code, e.text, callid)
        except Exception:
            log.exception("command %s failed", command)
            return wire.encode_err("failure", None, callid)
        finally:
            self.state.processing -= 1
        return wire.encode_ok(reply, callid)

    def _admin(self, command: str) -> bytes:
        if command == "version":
            lines = [VERSION]
        elif command == "stats":
            lines = [f"uptime {uptime(self.state)}", "pending_queries 0",
                     f"processing_queries {self.state.processing}", "bored_queryworkers 0",
                     f"queries {self.state.queries}", "times_out_of_qworkers 0"]
        else:
            lines = list(_HELP)
        return ("\r\n".join([*lines, "."]) + "\r\n").encode("utf-8")
