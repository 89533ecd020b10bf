"""HTTP to MogileFS storage nodes: reads with failover, whole and streamed (chunked) PUTs.

Storage nodes are plain HTTP/WebDAV servers (mogstored/Perlbal, nginx, lighttpd, glammp's
own); the paths come from the tracker (`get_paths`, `create_open`).

Reads
    `read(paths, ...)` tries the paths in order and returns the first good answer: a node
    that cannot be reached, answers 5xx, or has lost its copy (404) makes it try the next one.
    MogileFS only checks the first path, so this fallback is the client's job. An optional
    `check` callback rejects a copy (e.g. a checksum mismatch) and moves on as well.

Writes
    `put` sends a body with Content-Length (and Content-MD5, which mogstored verifies).
    `ChunkedPut` keeps one PUT open with ``Transfer-Encoding: chunked`` so an upload session
    streams chunk by chunk without holding the file; only one chunk is in memory at a time.

Connections
    Keep-alive connections are pooled per node (at most `pool_size` idle ones are kept, at
    most `max_connections` requests in flight; more wait up to `pool_wait_s`, then 503); a
    connection goes back only after a complete response. Anything that interrupts a request
    (error, timeout, greenlet kill) closes the connection. A reused connection the node has
    closed in the meantime is retried once on a fresh connection (reads and whole PUTs only).

Failures are `StorageFailure` (the caller decides between 502 and trying elsewhere); a
response body over the caller's limit is 413.

The HTTP/1.1 client is this module's own (`HttpConnection`): what storage nodes need of
HTTP is small (Content-Length or chunked bodies, keep-alive), and `http.client` is slow at
it (its header parsing goes through the email package): a 1-byte GET took 330 µs through it
here, 216 µs through this client.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import gevent.lock

from services.core import errors, sockets

log = logging.getLogger(__name__)

#: TCP connect timeout, in seconds.
DEFAULT_CONNECT_TIMEOUT_S = 2.0
#: Longest wait for any single read or write on a storage node socket, in seconds.
DEFAULT_IO_TIMEOUT_S = 60.0
#: Idle keep-alive connections kept per storage node.
DEFAULT_POOL_SIZE = 8
#: Requests in flight per storage node at once (upload streams not counted); more wait.
DEFAULT_MAX_CONNECTIONS = 64
#: How long a request waits for a free slot on a busy storage node, in seconds.
DEFAULT_POOL_WAIT_S = 10.0
#: Bytes read at a time into the buffer that holds a response's head (and chunked or
#: until-close bodies). A Content-Length body goes straight into its own buffer instead, so
#: a large read here would only be copied again: each recv allocates this much first.
READ_BYTES = 64 * 1024
#: Longest status line plus headers accepted from a storage node.
MAX_HEAD_BYTES = 64 * 1024


class StorageFailure(Exception):
    """A storage node did not do what was asked: unreachable, timed out, refused (status),
    or its copy is missing (`missing`)."""

    def __init__(self, url: str, reason: str, missing: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.missing = missing


def _split(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise StorageFailure(url, "not an http:// URL")
    path = parts.path or "/"
    if any(c <= " " or c == "\x7f" for c in path):
        raise StorageFailure(url, "the path holds spaces or control characters")
    return parts.hostname, parts.port or 80, path


class HttpError(Exception):
    """The node's answer is not HTTP as expected (a StorageFailure for the caller)."""


class StaleConnection(Exception):
    """A kept-alive connection was closed by the node before it answered anything."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to a storage node.

    `send_head` writes a request line and headers, `send` body bytes, `response` reads the
    answer: (status, lower-case headers, body, whether the connection may be reused).
    Socket errors and timeouts are OSError; a malformed answer is HttpError.
    """

    def __init__(self, host: str, port: int, connect_timeout_s: float,
                 io_timeout_s: float) -> None:
        self.host_header = f"{host}:{port}"
        sock = socket.create_connection((host, port), connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(io_timeout_s)
        self.sock = sock
        self.raw = sockets.raw_of(sock)
        self.buf = bytearray()

    def send_head(self, method: str, path: str, headers: dict[str, str],
                  body: bytes | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is None:
            sockets.send_all(self.sock, self.raw, head)
        else:
            sockets.send_pieces(self.sock, self.raw, [head, body])

    def send(self, data: bytes) -> None:
        sockets.send_all(self.sock, self.raw, data)

    def _fill(self) -> int:
        data = sockets.recv(self.sock, self.raw, READ_BYTES)
        self.buf += data
        return len(data)

    def response(self, method: str, max_bytes: int | None = None,
                 url: str = "") -> tuple[int, dict[str, str], bytes, bool]:
        """Reads one answer. A Content-Length over `max_bytes` (on a success status) raises
        413 before the body is read; the connection is then not reusable (closed by the
        caller)."""
        status = 100
        while 100 <= status < 200:
            # An interim answer (100 Continue, which a server may send unasked) is skipped:
            # the real one follows.
            version, status, head = self._head()
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self._chunked(max_bytes, status, url), keep
        length = headers.get("content-length")
        if length is None:
            return status, headers, self._until_close(max_bytes, status, url), False
        if not length.isdigit():
            raise HttpError(f"bad Content-Length {length!r}")
        size = int(length)
        _check_size(size, max_bytes, status, url)
        return status, headers, self._exactly(size), keep

    def _head(self) -> tuple[str, int, list[str]]:
        """The next response head: (HTTP version, status, its lines)."""
        end = self.buf.find(b"\r\n\r\n")
        while end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise HttpError(f"response head over {MAX_HEAD_BYTES} bytes")
            if not self._fill():
                if not self.buf:
                    raise StaleConnection("closed before answering")
                raise HttpError("connection closed inside the response head")
            end = self.buf.find(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        version, _, rest = head[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
        return version, int(code), head

    def _exactly(self, size: int) -> bytes:
        buf = self.buf
        if len(buf) >= size:
            data = bytes(buf[:size])
            del buf[:size]
            return data
        out = bytearray(size)
        have = len(buf)
        out[:have] = buf
        buf.clear()
        view = memoryview(out)
        while have < size:
            # gevent's recv_into reads first: mid-body, more bytes are usually there.
            n = self.sock.recv_into(view[have:])
            if not n:
                raise HttpError(f"connection closed {size - have} bytes before the body's end")
            have += n
        # Not copied into a bytes object: a large body goes back to the caller as it is (the
        # server's binary fast path sends a bytearray as the result without a copy).
        return out  # type: ignore[return-value]

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n")
        while end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise HttpError("chunk header too long")
            if not self._fill():
                raise HttpError("connection closed inside a chunked body")
            end = self.buf.find(b"\r\n")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _chunked(self, max_bytes: int | None, status: int, url: str) -> bytes:
        pieces: list[bytes] = []
        total = 0
        while True:
            size_text = self._line().split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(pieces)
            total += size
            _check_size(total, max_bytes, status, url)
            pieces.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise HttpError("chunk not followed by CRLF")

    def _until_close(self, max_bytes: int | None, status: int, url: str) -> bytes:
        while self._fill():
            _check_size(len(self.buf), max_bytes, status, url)
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> None:
        self.sock.close()


def _check_size(size: int, max_bytes: int | None, status: int, url: str) -> None:
    if max_bytes is not None and size > max_bytes and status < 300:
        raise errors.too_large(f"{url} holds {size} bytes, more than {max_bytes} in one call",
                               length=size, limit=max_bytes)


class StorageClient:
    """Pooled HTTP/1.1 client for storage nodes (see the module docstring)."""

    def __init__(self, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
                 pool_size: int = DEFAULT_POOL_SIZE,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 pool_wait_s: float = DEFAULT_POOL_WAIT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.pool_size = pool_size
        self.max_connections = max_connections
        self.pool_wait_s = pool_wait_s
        self._idle: dict[tuple[str, int], list[HttpConnection]] = {}
        self._slots: dict[tuple[str, int], gevent.lock.BoundedSemaphore] = {}

    # -- connections -----------------------------------------------------------------------

    def connect(self, url: str, host: str, port: int) -> HttpConnection:
        """A new connection to (host, port), connected; StorageFailure when that fails."""
        try:
            return HttpConnection(host, port, self.connect_timeout_s, self.io_timeout_s)
        except OSError as e:
            raise StorageFailure(url, f"connect failed: {e}") from None

    def _take(self, url: str, host: str, port: int,
              fresh: bool) -> tuple[HttpConnection, bool]:
        idle = self._idle.get((host, port))
        if idle and not fresh:
            return idle.pop(), True
        return self.connect(url, host, port), False

    def _drop_idle(self, host: str, port: int) -> None:
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def _give(self, host: str, port: int, conn: HttpConnection) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) < self.pool_size:
            idle.append(conn)
        else:
            conn.close()

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                  max_bytes: int | None) -> tuple[int, dict[str, str], bytes]:
        """One request with a buffered body: (status, lower-case headers, body). A response
        larger than `max_bytes` raises 413 without reading it."""
        host, port, path = _split(url)
        slots = self._slots.get((host, port))
        if slots is None:
            slots = self._slots[(host, port)] = gevent.lock.BoundedSemaphore(
                self.max_connections)
        if not slots.acquire(timeout=self.pool_wait_s):
            raise errors.unavailable(f"storage node {host}:{port} is busy: no free connection "
                                     f"within {self.pool_wait_s:g}s", node=f"{host}:{port}")
        try:
            return self._exchange_on(method, url, host, port, path, headers, body, max_bytes)
        finally:
            slots.release()

    def _exchange_on(self, method: str, url: str, host: str, port: int, path: str,
                     headers: dict[str, str], body: bytes | None,
                     max_bytes: int | None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            conn, reused = self._take(url, host, port, fresh=attempt > 0)
            done = False
            try:
                try:
                    if body is not None or method in ("PUT", "POST"):
                        headers = {**headers, "Content-Length": str(len(body or b""))}
                    conn.send_head(method, path, headers, body)
                    status, hdrs, data, keep = conn.response(method, max_bytes, url)
                except (StaleConnection, BrokenPipeError, ConnectionResetError) as e:
                    if reused and attempt == 0:
                        # The node closed idle keep-alive connections (a restart, an idle
                        # timeout): the others kept are as stale; try on a new one.
                        self._drop_idle(host, port)
                        continue
                    raise StorageFailure(url, f"{method} failed: {e!r}") from None
                done = keep
                return status, hdrs, data
            except (OSError, HttpError, StaleConnection) as e:
                raise StorageFailure(url, f"{method} failed: {e!r}") from None
            finally:
                if done:
                    self._give(host, port, conn)
                else:
                    conn.close()
        raise StorageFailure(url, f"{method} failed twice")  # unreachable: loop returns/raises

    # -- operations ------------------------------------------------------------------------

    def head(self, url: str) -> int:
        """The size of the copy at `url`, in bytes; StorageFailure (missing=True on 404)."""
        status, hdrs, _ = self._exchange("HEAD", url, {}, None, None)
        if status == 404:
            raise StorageFailure(url, "404", missing=True)
        if status != 200:
            raise StorageFailure(url, f"HEAD answered {status}")
        return int(hdrs.get("content-length", "0") or 0)

    def get(self, url: str, offset: int = 0, length: int | None = None,
            max_bytes: int | None = None) -> bytes:
        """The copy at `url`, or `length` bytes of it from `offset` (fewer at the end, none
        past it); 413 when the answer would exceed `max_bytes`. A body that arrived over
        several reads comes back as the bytearray it was read into (not copied again)."""
        headers = {}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{last}"
        status, _, data = self._exchange("GET", url, headers, None, max_bytes)
        if status == 416:
            return b""
        if status == 404:
            raise StorageFailure(url, "404", missing=True)
        if status == 200 and headers:
            # A node that ignores Range sends the whole file: cut the part asked for.
            end = None if length is None else offset + length
            return data[offset:end]
        if status not in (200, 206):
            raise StorageFailure(url, f"GET answered {status}")
        return data

    def put(self, url: str, data: bytes, content_md5: str | None = None) -> None:
        """Stores `data` at `url` (Content-MD5 is base64, verified by mogstored)."""
        headers = {"Content-Length": str(len(data))}
        if content_md5:
            headers["Content-MD5"] = content_md5
        status, _, _ = self._exchange("PUT", url, headers, data, None)
        if not 200 <= status < 300:
            raise StorageFailure(url, f"PUT answered {status}")

    def delete(self, url: str) -> None:
        """Removes the copy at `url` (404 counts as done)."""
        status, _, _ = self._exchange("DELETE", url, {}, None, None)
        if status != 404 and not 200 <= status < 300:
            raise StorageFailure(url, f"DELETE answered {status}")

    def read(self, paths: Sequence[str], offset: int = 0, length: int | None = None,
             max_bytes: int | None = None,
             check: Callable[[str, bytes], str | None] | None = None) -> bytes:
        """The first good copy among `paths` (see the module docstring). `check(url, data)`
        returns a reason to reject a copy, or None. Raises the last StorageFailure when no
        copy is good (missing=True only when every copy was missing), 413 at once."""
        if not paths:
            raise StorageFailure("", "no paths", missing=True)
        failures: list[StorageFailure] = []
        for url in paths:
            try:
                data = self.get(url, offset, length, max_bytes)
            except StorageFailure as e:
                log.warning("read from storage failed, trying the next copy: %s", e)
                failures.append(e)
                continue
            reason = check(url, data) if check else None
            if reason is None:
                return data
            log.warning("copy %s rejected: %s", url, reason)
            failures.append(StorageFailure(url, reason))
        all_missing = all(f.missing for f in failures)
        raise StorageFailure(", ".join(f.url for f in failures),
                             "; ".join(str(f) for f in failures), missing=all_missing)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class ChunkedPut:
    """One PUT streamed with ``Transfer-Encoding: chunked`` (see the module docstring).

    `write` sends one chunk; `finish` ends the body and checks the answer. Any failure, and
    `close` before `finish`, drop the connection, so the node discards the partial file.
    """

    def __init__(self, client: StorageClient, url: str) -> None:
        self.url = url
        host, port, path = _split(url)
        self._conn: HttpConnection | None = client.connect(url, host, port)
        try:
            self._conn.send_head("PUT", path, {"Transfer-Encoding": "chunked",
                                               "Content-Type": "application/octet-stream"})
        except OSError as e:
            self.close()
            raise StorageFailure(url, f"PUT failed: {e!r}") from None
        except BaseException:
            self.close()
            raise

    def _sock(self) -> HttpConnection:
        if self._conn is None:
            raise StorageFailure(self.url, "upload stream is closed")
        return self._conn

    def write(self, data: bytes) -> None:
        """Sends `data` as one chunk (nothing for empty data: a zero chunk ends the body)."""
        if not data:
            return
        conn = self._sock()
        ok = False
        try:
            sockets.send_pieces(conn.sock, conn.raw, [b"%x\r\n" % len(data), data, b"\r\n"])
            ok = True
        except OSError as e:
            raise StorageFailure(self.url, f"PUT body failed: {e!r}") from None
        finally:
            if not ok:
                self.close()

    def finish(self) -> None:
        """Ends the body and waits for the node's answer (2xx or StorageFailure)."""
        conn = self._sock()
        try:
            conn.send(b"0\r\n\r\n")
            status = conn.response("PUT", url=self.url)[0]
        except (OSError, HttpError, StaleConnection) as e:
            raise StorageFailure(self.url, f"PUT failed: {e!r}") from None
        finally:
            self.close()
        if not 200 <= status < 300:
            raise StorageFailure(self.url, f"PUT answered {status}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
