"""One memcached connection speaking the text and meta protocols, on gevent sockets.

`Connection` is used by one greenlet at a time (the pool in `server.py` guarantees it). Every
method takes an absolute deadline (a `time.monotonic()` instant); each socket operation waits
at most until then. Failures are raised as the exceptions below, which say what they mean for
the connection:

==================  ===========================================  ==================
exception           cause                                         connection
==================  ===========================================  ==================
ConnectFailed       refused, unreachable, connect timed out       never opened
ConnectionLost      reset, EOF, broken pipe while talking         closed by the pool
ReadTimeout         no (complete) reply before the deadline       closed by the pool
ProtocolError       a reply line that makes no sense here         closed by the pool
ServerReplyError    ``SERVER_ERROR``/``CLIENT_ERROR``/``ERROR``   reusable when `reusable`
==================  ===========================================  ==================

Any other interruption (a `gevent.Timeout`, a greenlet kill) leaves the connection in an
unknown state too; the pool closes it in a `finally` because the unread reply would otherwise
be read as the answer to the next command.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from gevent import socket

from services.core import sockets

#: Bytes asked of the kernel per recv.
RECV_BYTES = 256 * 1024
_META_STATUSES = frozenset({b"VA", b"HD", b"EN", b"NF", b"NS", b"EX"})
#: Replies up to this size are first tried in bulk (`_whole_reply`); a larger one is mostly
#: one big value, which splitting at CRLFs would only copy.
BULK_PARSE_BYTES = 256 * 1024
#: A connection's buffer is compacted once this many consumed bytes pile up at its front.
COMPACT_BYTES = 64 * 1024


class MemcacheIOError(Exception):
    """Base of the failures below; `sent` says whether the request left completely."""

    sent = True


class ConnectFailed(MemcacheIOError):
    """The TCP connection could not be opened (refused, unreachable, timed out)."""

    sent = False


class ConnectionLost(MemcacheIOError):
    """The server closed or reset the connection, or a send failed."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ReadTimeout(MemcacheIOError):
    """The reply did not arrive before the deadline (the server may still execute it)."""


class ProtocolError(MemcacheIOError):
    """A reply that does not belong to the command sent; the stream is out of sync."""


class ServerReplyError(Exception):
    """memcached refused the command with ``SERVER_ERROR``, ``CLIENT_ERROR`` or ``ERROR``.

    `reusable` is true when memcached consumed the whole command (e.g. ``SERVER_ERROR object
    too large for cache`` after it swallowed the data block), so the stream is still in sync.
    """

    def __init__(self, line: bytes, reusable: bool) -> None:
        super().__init__(line.decode("latin-1"))
        self.line = line
        self.reusable = reusable


class MetaReply(NamedTuple):
    """A meta-command reply: `status` (``VA``, ``HD``, ``EN``, ``NF``, ``NS``, ``EX``), the
    return flags as letter -> token (``{b"c": b"17", b"W": b""}``) and the value of a ``VA``
    (None otherwise)."""

    status: bytes
    flags: dict[bytes, bytes]
    value: bytes | None

    def flag(self, letter: bytes) -> bytes | None:
        return self.flags.get(letter)

    def number(self, letter: bytes) -> int:
        """The integer token of a return flag (``c``, ``f``, ``t``); 0 when absent."""
        token = self.flags.get(letter)
        try:
            return int(token) if token else 0
        except ValueError:
            raise ProtocolError(f"meta flag {letter!r} is not a number: {token!r}") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeout("deadline passed")
    return left


def _whole_reply(data: bytes) -> dict[bytes, tuple[int, bytes, int]] | None:
    """A complete ``gets``/``gats`` reply parsed in bulk, or None when it must be parsed line by
    line (a value holding a CRLF, an error reply, ``get`` without cas, not all received yet).

    Split at every CRLF, a reply alternates VALUE headers and data blocks and ends with END.
    The first header is always genuine, and every block's length is checked against its
    header's size: a value holding a CRLF makes its own check fail before any later, misread
    header is trusted, so a reply that passes every check was read exactly as sent.
    """
    parts = data.split(b"\r\n")
    if len(parts) % 2 or parts[-2] != b"END" or parts[-1]:
        return None
    headers = parts[0:-2:2]
    blocks = parts[1:-2:2]
    count = len(headers)
    if not count:
        return {}
    tokens = b" ".join(headers).split(b" ")
    if len(tokens) != 5 * count or tokens[0::5].count(b"VALUE") != count:
        return None
    try:
        if list(map(int, tokens[3::5])) != list(map(len, blocks)):
            return None
        values = zip(map(int, tokens[2::5]), blocks, map(int, tokens[4::5]), strict=True)
        return dict(zip(tokens[1::5], values, strict=True))
    except ValueError:
        return None


class Connection:
    """A TCP connection to one memcached server, with a read buffer."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self._buf = bytearray()
        self._pos = 0
        self._awaiting = False
        self.closed = False

    @classmethod
    def open(cls, host: str, port: int, timeout_s: float) -> Connection:
        """Connects with TCP_NODELAY (requests are small and latency-bound); ConnectFailed."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as e:
            raise ConnectFailed(f"connect to {host}:{port} failed: {e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, f"{host}:{port}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    # -- raw I/O ---------------------------------------------------------------------------

    def send(self, data: bytes, deadline: float) -> None:
        sock = self.sock
        try:
            sock.settimeout(_remaining(deadline))
            sockets.send_all(sock, sock._sock, data)  # type: ignore[attr-defined]
        except TimeoutError:
            raise ReadTimeout("send timed out") from None
        except OSError as e:
            raise ConnectionLost(f"send failed: {e}", sent=False) from None
        self._awaiting = True

    def _recv(self, deadline: float) -> bytes:
        """One read from the socket (ConnectionLost when it is closed)."""
        sock = self.sock
        try:
            sock.settimeout(_remaining(deadline))
            if self._awaiting:
                # Just after a request the reply cannot be there yet: wait for it rather than
                # pay for a recv that fails with EAGAIN.
                self._awaiting = False
                sockets.wait_readable(sock)
            chunk = sock.recv(RECV_BYTES)
        except TimeoutError:
            raise ReadTimeout("no reply before the deadline") from None
        except OSError as e:
            raise ConnectionLost(f"recv failed: {e}", sent=True) from None
        if not chunk:
            raise ConnectionLost("connection closed by the server", sent=True)
        return chunk

    def _fill(self, deadline: float) -> None:
        chunk = self._recv(deadline)
        if self._pos >= COMPACT_BYTES:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk

    def readline(self, deadline: float) -> bytes:
        """One reply line without its CRLF."""
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._consume(end + 2)
                return line
            self._fill(deadline)

    def read_block(self, size: int, deadline: float) -> bytes:
        """A data block of `size` bytes followed by CRLF."""
        while len(self._buf) - self._pos < size + 2:
            self._fill(deadline)
        start = self._pos
        block = bytes(self._buf[start : start + size])
        if self._buf[start + size : start + size + 2] != b"\r\n":
            raise ProtocolError("data block not terminated by CRLF")
        self._consume(start + size + 2)
        return block

    def _consume(self, upto: int) -> None:
        if upto >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        else:
            self._pos = upto

    def reply(self, deadline: float) -> bytes:
        """One reply line; ServerReplyError for the error replies."""
        line = self.readline(deadline)
        if line.startswith((b"SERVER_ERROR", b"CLIENT_ERROR")) or line == b"ERROR":
            # memcached answers a store it refused for size or memory only after swallowing
            # the data block, so those leave the stream in sync; other errors may not.
            reusable = line.startswith(b"SERVER_ERROR") and (
                b"too large" in line or b"out of memory" in line
            )
            raise ServerReplyError(line, reusable)
        return line

    # -- commands --------------------------------------------------------------------------

    def retrieve(
        self, command: bytes, keys: Iterable[bytes], deadline: float
    ) -> dict[bytes, tuple[int, bytes, int]]:
        """``get``/``gets``/``gat``/``gats`` (command may carry the exptime): key ->
        (flags, value, cas); misses are absent. cas is 0 when the command does not return it."""
        self.send(command + b" " + b" ".join(keys) + b"\r\n", deadline)
        return self.read_values(deadline)

    def read_values(self, deadline: float) -> dict[bytes, tuple[int, bytes, int]]:
        # The hot path of every read. The reply is parsed from an immutable copy of the
        # buffer, so keys and values are sliced out once; a header or data block that is not
        # complete yet is read on (`_more`) and parsed again from its start.
        found: dict[bytes, tuple[int, bytes, int]] = {}
        data = self._take() or self._recv(deadline)
        if len(data) <= BULK_PARSE_BYTES and data.endswith(b"END\r\n"):
            whole = _whole_reply(data)
            if whole is not None:
                return whole
        pos = 0
        while True:
            end = data.find(b"\r\n", pos)
            if end < 0:
                data, pos = self._more(data, pos, 0, deadline)
                continue
            if data.startswith(b"VALUE ", pos):
                parts = data[pos + 6 : end].split(b" ")
                try:
                    if len(parts) == 4:
                        key, flags, size, cas = parts
                        cas_id = int(cas)
                    else:
                        key, flags, size = parts
                        cas_id = 0
                    start = end + 2
                    stop = start + int(size)
                    if not key or start > stop or not flags.isdigit():
                        raise ValueError
                except ValueError:
                    raise ProtocolError(f"bad VALUE line: {data[pos:end][:80]!r}") from None
                if len(data) < stop + 2:
                    data, pos = self._more(data, pos, stop + 2 - pos, deadline)
                    continue
                if not data.startswith(b"\r\n", stop):
                    raise ProtocolError("data block not terminated by CRLF")
                found[key] = (int(flags), data[start:stop], cas_id)
                pos = stop + 2
                continue
            self._buf += memoryview(data)[pos:]
            if end == pos + 3 and data.startswith(b"END", pos):
                self._consume(5)
                return found
            line = self.reply(deadline)  # raises ServerReplyError for error replies
            raise ProtocolError(f"unexpected line in a get reply: {line[:80]!r}")

    def _take(self) -> bytes:
        """The unread bytes of the buffer, which is left empty."""
        buf = self._buf
        if self._pos:
            with memoryview(buf) as view:
                data = view[self._pos :].tobytes()
        else:
            data = bytes(buf)
        buf.clear()
        self._pos = 0
        return data

    def _more(self, data: bytes, pos: int, need: int, deadline: float) -> tuple[bytes, int]:
        """`data` from `pos` with at least one more read, and more until `need` bytes."""
        pieces = [data[pos:]]
        have = len(pieces[0])
        while True:
            chunk = self._recv(deadline)
            pieces.append(chunk)
            have += len(chunk)
            if have >= need:
                return b"".join(pieces), 0

    def storage(
        self,
        commands: list[tuple[bytes, bytes, int, int, bytes, int]],
        deadline: float,
    ) -> list[bytes | ServerReplyError]:
        """Pipelines store commands (verb, key, flags, exptime, value, cas) in one write; one
        reply each: ``STORED``/``NOT_STORED``/``EXISTS``/``NOT_FOUND`` or, see `pipeline`, a
        reusable ServerReplyError."""
        return self.pipeline([storage_command(*c) for c in commands], deadline)

    def pipeline(self, commands: list[bytes], deadline: float) -> list[bytes | ServerReplyError]:
        """Sends complete commands (CRLF and data blocks included) in one write and reads one
        reply line per command. A reusable ServerReplyError (memcached refused that command
        but stayed in sync) takes that command's place; any other error reply is raised."""
        self.send(b"".join(commands), deadline)
        return self._replies(len(commands), deadline)

    def _replies(self, count: int, deadline: float) -> list[bytes | ServerReplyError]:
        replies: list[bytes | ServerReplyError] = []
        for _ in range(count):
            try:
                replies.append(self.reply(deadline))
            except ServerReplyError as e:
                if not e.reusable:
                    raise
                replies.append(e)
        return replies

    def command(self, line: bytes, deadline: float) -> bytes:
        """One single-line command and its one-line reply (``touch``, ``delete``, ...)."""
        self.send(line + b"\r\n", deadline)
        return self.reply(deadline)

    def arithmetic(self, line: bytes, deadline: float) -> int | None:
        """A meta ``ma`` command with the ``v`` flag: the new value, or None for ``NF``."""
        self.send(line + b"\r\n", deadline)
        head = self.reply(deadline)
        if head == b"NF" or head.startswith(b"NF "):
            return None
        parts = head.split()
        if len(parts) < 2 or parts[0] != b"VA":
            raise ProtocolError(f"unexpected ma reply: {head[:80]!r}")
        try:
            return int(self.read_block(int(parts[1]), deadline).strip())
        except ValueError:
            raise ProtocolError(f"non-numeric counter reply to {line[:80]!r}") from None

    def meta(self, line: bytes, deadline: float) -> MetaReply:
        """One meta command (``mg``/``md``/``ma``/``ms`` without a data block) and its reply."""
        self.send(line + b"\r\n", deadline)
        head = self.reply(deadline)
        parts = head.split()
        if not parts or parts[0] not in _META_STATUSES:
            raise ProtocolError(f"unexpected meta reply: {head[:80]!r}")
        value = None
        tokens = parts[1:]
        if parts[0] == b"VA":
            if not tokens or not tokens[0].isdigit():
                raise ProtocolError(f"meta VA without a size: {head[:80]!r}")
            value = self.read_block(int(tokens[0]), deadline)
            tokens = tokens[1:]
        return MetaReply(parts[0], {t[:1]: t[1:] for t in tokens}, value)

    def stats(self, group: bytes, deadline: float) -> dict[str, str]:
        """``stats [group]``: name -> value, read until ``END``. ``STAT``/``ITEM`` lines give
        their name; other lines (``stats detail dump``'s ``PREFIX p ...``) are keyed by their
        first two words. A group answered with one line (``stats reset`` → ``RESET``,
        ``stats detail on`` → ``OK``) gives {"reply": line}."""
        self.send(b"stats" + (b" " + group if group else b"") + b"\r\n", deadline)
        found: dict[str, str] = {}
        while True:
            line = self.reply(deadline)
            if line == b"END":
                return found
            if not found and line in (b"OK", b"RESET"):
                return {"reply": line.decode("latin-1")}
            parts = line.decode("latin-1").split(" ", 2)
            if parts[0] in ("STAT", "ITEM") and len(parts) >= 2:
                found[parts[1]] = parts[2] if len(parts) == 3 else ""
            else:
                found[" ".join(parts[:2])] = parts[2] if len(parts) == 3 else ""

    def version(self, deadline: float) -> str:
        line = self.command(b"version", deadline)
        if not line.startswith(b"VERSION "):
            raise ProtocolError(f"unexpected version reply: {line[:80]!r}")
        return line[8:].decode("latin-1")


def storage_command(
    verb: bytes, key: bytes, flags: int, exptime: int, value: bytes, cas: int = 0
) -> bytes:
    """The bytes of one text-protocol store command, data block included."""
    head = b"%s %s %d %d %d" % (verb, key, flags, exptime, len(value))
    if verb == b"cas":
        head += b" %d" % cas
    # One copy of the value (``a + b + c`` would copy a large value twice).
    return b"".join((head, b"\r\n", value, b"\r\n"))
