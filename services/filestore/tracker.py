"""A gevent-native MogileFS tracker client: line protocol, several trackers, bounded pools.

Works against real MogileFS 2.x trackers as well as glammp's: requests are one
``<command> <url-encoded args>\\r\\n`` line, replies one ``OK <args>`` or ``ERR <code> <text>``
line; reply arguments are parsed by name (the real tracker sends them in random order).

Trackers
    Requests start at the next tracker in round-robin order. A tracker that cannot be reached
    (connect refused or timed out) is marked dead for `retry_dead_s` seconds and skipped while
    live ones remain; it is tried again after that time, or at once when every tracker is
    marked dead. An idempotent request whose connection broke after it was sent is retried on
    the next tracker; any other such request fails, because the tracker may have run it.

Connections
    Each tracker has a bounded pool of `pool_size` connections. A caller waits up to
    `pool_wait_s` seconds for a free one (then 503, retryable). A connection goes back to its
    pool only after a complete reply; one interrupted by anything (timeout, greenlet kill, any
    `BaseException`) is closed, because its state is unknown. After ``ERR key_exists`` from
    `rename` the connection is closed too: real trackers follow that reply with a stray ``OK``.
    An idle connection is checked before reuse and dropped when the tracker has closed it.

Error mapping (the one place tracker failures become `ServiceError`; ``details`` carries
``tracker_error`` = the tracker's code so callers can tell outcomes apart):

===============================================  ====  =========
what happened                                    code  retryable
===============================================  ====  =========
unknown_key, invalid_key, domain/class_not_found  404   no
none_match (a listing ended)                      404   no
no_devices                                        507   no
unreg_domain, unreg_class, no_key, no_domain,     400   no
missing/invalid arguments, after_mismatch
*_exists, *_has_files, *_has_classes, fid_in_use  409   no
checksum_mismatch                                 1002  no
size_mismatch, size_verify_error, failure, db,    502   no
other codes, unparsable reply, reply too long
no tracker reachable, no free connection in time  503   yes
connection lost after sending a write             502   no
no reply within `io_timeout_s`                    504   only for idempotent requests
===============================================  ====  =========
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from urllib.parse import quote_from_bytes, unquote_to_bytes

import gevent.lock

from services.core import errors, sockets
from services.core.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)

#: Connections kept per tracker (callers beyond this wait).
DEFAULT_POOL_SIZE = 8
#: How long a caller waits for a free connection, in seconds.
DEFAULT_POOL_WAIT_S = 5.0
#: TCP connect timeout, in seconds.
DEFAULT_CONNECT_TIMEOUT_S = 2.0
#: Longest wait for one reply, in seconds (create_close may checksum a large file).
DEFAULT_IO_TIMEOUT_S = 120.0
#: How long an unreachable tracker is skipped, in seconds.
DEFAULT_RETRY_DEAD_S = 5.0
#: Longest reply line accepted, in bytes (1000 keys of 255 bytes, escaped, fit easily).
MAX_REPLY_BYTES = 8 * 1024 * 1024

_NOT_FOUND = {"unknown_key", "invalid_key", "domain_not_found", "class_not_found",
              "unknown_fid", "none_match", "unknown_host", "host_not_found", "no_device"}
_BAD_REQUEST = {"unreg_domain", "unreg_class", "no_domain", "no_key", "no_class", "no_fid",
                "no_devid", "no_path", "invalid_mindevcount", "invalid_replpolicy",
                "invalid_hashtype", "invalid_checksum_format", "bad_params", "after_mismatch",
                "bogus_args", "nodel_default_class", "invalid_destdev", "bad_args"}
_CONFLICT = {"key_exists", "domain_exists", "class_exists", "domain_has_files",
             "domain_has_classes", "domain_not_empty", "class_has_files", "fid_in_use",
             "fid_exists", "dup", "no_temp_file"}
# Bytes the real tracker leaves unescaped; quoting the same way keeps request lines readable.
_SAFE = b"-_.,/:"


class Reply(dict[str, bytes]):
    """The arguments of an ``OK`` reply by name, values as raw bytes."""

    def text(self, name: str, default: str = "") -> str:
        value = self.get(name)
        return default if value is None else value.decode("utf-8", "surrogateescape")

    def int(self, name: str, default: int = 0) -> int:
        value = self.get(name)
        if value is None or value == b"":
            return default
        try:
            return int(value)
        except ValueError:
            raise errors.bad_gateway(f"tracker sent {name}={value!r}, not a number",
                                     field=name) from None


def encode_args(args: Mapping[str, object]) -> bytes:
    """Form-encodes request arguments; None values are left out, str is sent as UTF-8."""
    parts = []
    for name, value in args.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        parts.append(quote_from_bytes(name.encode(), _SAFE) + "="
                     + quote_from_bytes(raw, _SAFE + b" ").replace(" ", "+"))
    return "&".join(parts).encode("ascii")


def _unescape(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def parse_reply(line: bytes) -> Reply | tuple[str, str]:
    """A reply line (without CRLF) as a `Reply`, or (code, text) for ``ERR``; a garbled line
    raises 502."""
    if line.startswith(b"OK"):
        reply = Reply()
        for pair in line[3:].split(b"&"):
            if not pair:
                continue
            name, _, value = pair.partition(b"=")
            reply[_unescape(name).decode("utf-8", "surrogateescape")] = _unescape(value)
        return reply
    if line.startswith(b"ERR "):
        fields = line[4:].split(b" ", 2)
        code = fields[0].decode("ascii", "replace")
        text = _unescape(fields[1]).decode("utf-8", "replace") if len(fields) > 1 else code
        return code, text
    raise errors.bad_gateway(f"tracker sent an unparsable reply {line[:80]!r}")


def error_for(code: str, text: str, tracker: str) -> ServiceError:
    """The ServiceError for ``ERR <code> <text>`` (see the table in the module docstring)."""
    details = {"tracker_error": code, "tracker": tracker}
    message = f"tracker {tracker}: {code}: {text}"
    if code in _NOT_FOUND:
        return errors.not_found(message, **details)
    if code == "no_devices":
        return errors.insufficient_storage(message, **details)
    if code in _BAD_REQUEST:
        return errors.bad_request(message, **details)
    if code in _CONFLICT:
        return errors.conflict(message, **details)
    if code == "checksum_mismatch":
        return errors.service_error(ErrorCode.CHECKSUM_MISMATCH, message, retryable=False,
                                    details=details)
    return errors.bad_gateway(message, **details)


def tracker_code(err: ServiceError) -> str:
    """The tracker's ERR code behind `err` ("" when it did not come from an ERR reply)."""
    return (err.details or {}).get("tracker_error", "")


class _Broken(Exception):
    """The connection failed; `sent` says whether the request may have reached the tracker."""

    def __init__(self, sent: bool, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.sent = sent
        self.timed_out = timed_out


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = sockets.raw_of(sock)
        self.buf = bytearray()

    def request(self, line: bytes, io_timeout_s: float) -> bytes:
        """Sends one request line and returns the reply line (no CRLF); raises `_Broken`."""
        self.sock.settimeout(io_timeout_s)
        try:
            sockets.send_all(self.sock, self.raw, line)
        except OSError as e:
            # Nothing may have arrived, but a partial line could still have: only reads retry.
            raise _Broken(True, f"send failed: {e}") from None
        try:
            while True:
                end = self.buf.find(b"\n")
                if end >= 0:
                    reply = bytes(self.buf[:end]).rstrip(b"\r")
                    del self.buf[: end + 1]
                    return reply
                if len(self.buf) > MAX_REPLY_BYTES:
                    raise _Broken(True, f"reply longer than {MAX_REPLY_BYTES} bytes")
                chunk = sockets.recv(self.sock, self.raw, 65536)
                if not chunk:
                    raise _Broken(True, "tracker closed the connection")
                self.buf += chunk
        except TimeoutError:
            raise _Broken(True, f"no reply within {io_timeout_s:g}s", timed_out=True) from None
        except OSError as e:
            raise _Broken(True, f"receive failed: {e}") from None

    def usable(self) -> bool:
        """False when the idle connection has something to read: the tracker closed it (a
        restart) or sent a stray line. Either way it must not carry the next request."""
        if self.buf:
            return False
        try:
            # One non-blocking peek on the OS socket (gevent's would wait for a byte, and
            # its select with a zero timeout costs far more).
            (self.raw or self.sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: still open and quiet
        except (OSError, ValueError):
            return False
        return False  # EOF, or a stray byte

    def close(self) -> None:
        self.sock.close()


class TrackerNode:
    """One tracker: its address, liveness and bounded connection pool."""

    def __init__(self, address: str, pool_size: int, connect_timeout_s: float) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"tracker {address!r} is not host:port")
        self.address = address
        self.host, self.port = host, int(port)
        self.connect_timeout_s = connect_timeout_s
        self.dead_until = 0.0
        self._slots = gevent.lock.BoundedSemaphore(pool_size)
        self._idle: list[_Connection] = []

    def acquire(self, wait_s: float) -> _Connection:
        """A pooled or new connection; 503 when none frees up in `wait_s`, `_Broken(sent=False)`
        when connecting fails."""
        if not self._slots.acquire(timeout=wait_s):
            raise errors.unavailable(f"no free connection to tracker {self.address} "
                                     f"within {wait_s:g}s", tracker=self.address)
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        except OSError as e:
            self._slots.release()
            raise _Broken(False, f"connect failed: {e}") from None
        except BaseException:
            self._slots.release()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock)

    def release(self, conn: _Connection, reuse: bool) -> None:
        if reuse:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Trackers:
    """The trackers of one MogileFS installation (see the module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_wait_s: float = DEFAULT_POOL_WAIT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
        retry_dead_s: float = DEFAULT_RETRY_DEAD_S,
    ) -> None:
        if not addresses:
            raise ValueError("at least one tracker is needed")
        self.nodes = [TrackerNode(a, pool_size, connect_timeout_s) for a in addresses]
        self.pool_wait_s = pool_wait_s
        self.io_timeout_s = io_timeout_s
        self.retry_dead_s = retry_dead_s
        self._next = itertools.count()

    def _order(self) -> list[TrackerNode]:
        start = next(self._next) % len(self.nodes)
        ring = self.nodes[start:] + self.nodes[:start]
        now = time.monotonic()
        return [n for n in ring if n.dead_until <= now] + [n for n in ring if n.dead_until > now]

    def call(self, command: str, args: Mapping[str, object] | None = None,
             idempotent: bool = False, timeout_s: float | None = None) -> Reply:
        """Runs one command; returns the OK reply's arguments or raises the mapped
        `ServiceError` (see the module docstring). `timeout_s` replaces `io_timeout_s` for a
        command known to take long (a create_close that checksums a large file)."""
        line = command.encode("ascii") + b" " + encode_args(args or {}) + b"\r\n"
        failures: list[str] = []
        for node in self._order():
            try:
                return self._call_on(node, line, timeout_s or self.io_timeout_s)
            except _Broken as e:
                failures.append(f"{node.address}: {e}")
                if not e.sent:
                    node.dead_until = time.monotonic() + self.retry_dead_s
                    log.warning("tracker %s unreachable (%s); skipped for %gs",
                                node.address, e, self.retry_dead_s)
                    continue
                if e.timed_out:
                    raise errors.timeout(f"tracker {node.address}: {command}: {e}",
                                         retryable=idempotent, tracker=node.address) from None
                if idempotent:
                    continue
                raise errors.bad_gateway(
                    f"tracker {node.address} dropped the connection during {command}; "
                    f"it may have run", tracker=node.address) from None
        raise errors.unavailable(f"no tracker answered {command}: " + "; ".join(failures),
                                 trackers=",".join(n.address for n in self.nodes))

    def _call_on(self, node: TrackerNode, line: bytes, io_timeout_s: float) -> Reply:
        conn = node.acquire(self.pool_wait_s)
        reuse = False
        try:
            parsed = parse_reply(conn.request(line, io_timeout_s))
            node.dead_until = 0.0
            if isinstance(parsed, Reply):
                reuse = True
                return parsed
            code, text = parsed
            # A real tracker sends a stray "OK" after this one: never read it as another reply.
            reuse = code != "key_exists"
            raise error_for(code, text, node.address)
        finally:
            node.release(conn, reuse)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
