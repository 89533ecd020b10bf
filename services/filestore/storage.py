"""HTTP to MogileFS storage nodes: reads with failover, whole and streamed (chunked) PUTs.

Storage nodes are plain HTTP/WebDAV servers (mogstored/Perlbal, nginx, lighttpd, glammp's
own); the paths come from the tracker (`get_paths`, `create_open`).

Reads
    `read(paths, ...)` tries the paths in order and returns the first good answer: a node
    that cannot be reached, answers 5xx, or has lost its copy (404) makes it try the next one.
    MogileFS only checks the first path, so this fallback is the client's job. An optional
    `check` callback rejects a copy (e.g. a checksum mismatch) and moves on as well.

    With `stream_min`, a copy at least that long is not read here: `read` returns a
    `StoredBody` as soon as its node has answered, and the server sends the body on as it
    arrives. If that node fails mid-body, the body asks the next path for the rest (a Range
    request from where it stopped); only when no path can give it does the read fail, after
    the caller's reply has started (see `services.core.streams`).

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import gevent.lock

from glammp.common.ttypes import ServiceError
from services.core import errors, sockets
from services.core.streams import StreamedBody

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
#: Bytes read from a storage node at a time while a body is streamed on.
STREAM_CHUNK_BYTES = 256 * 1024
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
        status, headers, keep = self.response_head()
        body, whole = self.response_body(method, status, headers, max_bytes, url)
        return status, headers, body, keep and whole

    def response_head(self) -> tuple[int, dict[str, str], bool]:
        """An answer's status, lower-case headers and whether the connection may be kept."""
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
        return status, headers, keep

    def response_body(self, method: str, status: int, headers: dict[str, str],
                      max_bytes: int | None, url: str) -> tuple[bytes, bool]:
        """The body of the answer whose head was read, and whether the connection is left at
        the end of it (False: it ended by closing)."""
        if method == "HEAD" or status in (204, 304):
            return b"", True
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._chunked(max_bytes, status, url), True
        size = content_length(headers)
        if size is None:
            return self._until_close(max_bytes, status, url), False
        _check_size(size, max_bytes, status, url)
        return self._exactly(size), True

    def read_some(self, n: int) -> bytes:
        """Up to `n` bytes of the body being read (HttpError when the node closes)."""
        buf = self.buf
        if buf:
            out = bytes(buf[:n])
            del buf[:n]
            return out
        data: bytes = self.sock.recv(n)
        if not data:
            raise HttpError("connection closed before the body's end")
        return data

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


def content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length of a body that is not chunked; None when there is none."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return None
    length = headers.get("content-length")
    if length is None:
        return None
    if not length.isdigit():
        raise HttpError(f"bad Content-Length {length!r}")
    return int(length)


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

    def slot(self, host: str, port: int) -> gevent.lock.BoundedSemaphore:
        """A request slot on (host, port), taken (503 when none frees up in time); the
        caller releases it."""
        slots = self._slots.get((host, port))
        if slots is None:
            slots = self._slots[(host, port)] = gevent.lock.BoundedSemaphore(
                self.max_connections)
        if not slots.acquire(timeout=self.pool_wait_s):
            raise errors.unavailable(f"storage node {host}:{port} is busy: no free connection "
                                     f"within {self.pool_wait_s:g}s", node=f"{host}:{port}")
        return slots

    def give(self, host: str, port: int, conn: HttpConnection) -> None:
        """A connection left at the end of a complete answer, back to the idle pool."""
        self._give(host, port, conn)

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                  max_bytes: int | None,
                  stream_min: int | None = None) -> tuple[int, dict[str, str], Any]:
        """One request with a buffered body: (status, lower-case headers, body). A response
        larger than `max_bytes` raises 413 without reading it. With `stream_min`, a success
        body at least that long comes back unread, as a `StoredBody` holding the connection
        and its request slot."""
        host, port, path = _split(url)
        slots = self.slot(host, port)
        handed = False
        try:
            status, hdrs, data = self._exchange_on(method, url, host, port, path, headers,
                                                   body, max_bytes, stream_min, slots)
            handed = isinstance(data, StoredBody)
            return status, hdrs, data
        finally:
            if not handed:
                slots.release()

    def _exchange_on(self, method: str, url: str, host: str, port: int, path: str,
                     headers: dict[str, str], body: bytes | None, max_bytes: int | None,
                     stream_min: int | None,
                     slots: gevent.lock.BoundedSemaphore) -> tuple[int, dict[str, str], Any]:
        for attempt in (0, 1):
            conn, reused = self._take(url, host, port, fresh=attempt > 0)
            done = handed = False
            try:
                try:
                    if body is not None or method in ("PUT", "POST"):
                        headers = {**headers, "Content-Length": str(len(body or b""))}
                    conn.send_head(method, path, headers, body)
                    status, hdrs, keep = conn.response_head()
                    # A whole copy (or the range asked for) long enough to be streamed.
                    size = (content_length(hdrs)
                            if status == (206 if "Range" in headers else 200) else None)
                    if stream_min is not None and size is not None and size >= stream_min:
                        _check_size(size, max_bytes, status, url)
                        handed = True
                        return status, hdrs, StoredBody(self, url, (host, port), conn, slots,
                                                        size, keep)
                    data, whole = conn.response_body(method, status, hdrs, max_bytes, url)
                    keep = keep and whole
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
                elif not handed:
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
            max_bytes: int | None = None, stream_min: int | None = None) -> Any:
        """The copy at `url`, or `length` bytes of it from `offset` (fewer at the end, none
        past it); 413 when the answer would exceed `max_bytes`. A body that arrived over
        several reads comes back as the bytearray it was read into (not copied again); with
        `stream_min`, one at least that long comes back unread, as a `StoredBody`."""
        headers = {}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{last}"
        status, _, data = self._exchange("GET", url, headers, None, max_bytes, stream_min)
        if isinstance(data, StoredBody):
            data.offset = offset
            return data
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
             check: Callable[[str, bytes], str | None] | None = None,
             stream_min: int | None = None) -> Any:
        """The first good copy among `paths` (see the module docstring). `check(url, data)`
        returns a reason to reject a copy, or None. Raises the last StorageFailure when no
        copy is good (missing=True only when every copy was missing), 413 at once.

        With `stream_min` (and no `check`, which needs the whole copy first), a copy at least
        that long comes back as a `StoredBody` as soon as its node has answered; the paths
        after it are where the body finds the rest if that node fails midway."""
        if not paths:
            raise StorageFailure("", "no paths", missing=True)
        failures: list[StorageFailure] = []
        for i, url in enumerate(paths):
            try:
                data = self.get(url, offset, length, max_bytes,
                                None if check is not None else stream_min)
            except StorageFailure as e:
                log.warning("read from storage failed, trying the next copy: %s", e)
                failures.append(e)
                continue
            if isinstance(data, StoredBody):
                data.fallback = list(paths[i + 1 :])
                return data
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


class StoredBody(StreamedBody):
    """A copy's bytes, read from its storage node while the server sends them on (see
    `services.core.streams`). When the node fails midway, the rest is asked of the next copy
    in `fallback` (a Range request from where it stopped), so the caller still gets exactly
    `length` bytes; only when no copy can give them does `chunks` raise (502)."""

    def __init__(self, client: StorageClient, url: str, node: tuple[str, int],
                 conn: HttpConnection, slots: gevent.lock.BoundedSemaphore, length: int,
                 keep: bool) -> None:
        super().__init__(length)
        self.client = client
        self.url = url
        # Where the body starts in the file (to ask another copy for the rest).
        self.offset = 0
        self.fallback: list[str] = []
        self._node = node
        self._conn: HttpConnection | None = conn
        self._slots: gevent.lock.BoundedSemaphore | None = slots
        self._keep = keep
        self._failures: list[str] = []

    def chunks(self) -> Iterator[bytes]:
        got = 0
        while got < self.length:
            try:
                if self._conn is None:
                    self._resume(got)
                assert self._conn is not None
                piece = self._conn.read_some(min(STREAM_CHUNK_BYTES, self.length - got))
            except (OSError, HttpError, StorageFailure, ServiceError) as e:
                self._failures.append(f"{self.url}: {e!r}")
                self._release(reuse=False)
                if not self.fallback:
                    raise errors.bad_gateway(
                        f"no copy could give the rest of a {self.length}-byte body after "
                        f"{got} bytes: {'; '.join(self._failures)}") from None
                self.url = self.fallback.pop(0)
                log.warning("storage read failed midway, going on from %s: %s", self.url, e)
                continue
            got += len(piece)
            yield piece
        self._release(reuse=self._keep)

    def _resume(self, got: int) -> None:
        """The rest of the body, from byte `got`, asked of `self.url`."""
        host, port, path = _split(self.url)
        self._node = (host, port)
        self._slots = self.client.slot(host, port)
        self._conn = self.client.connect(self.url, host, port)
        start, end = self.offset + got, self.offset + self.length - 1
        self._conn.send_head("GET", path, {"Range": f"bytes={start}-{end}"})
        status, headers, self._keep = self._conn.response_head()
        if (status != 206 or content_length(headers) != self.length - got
                or not headers.get("content-range", "").startswith(f"bytes {start}-")):
            raise StorageFailure(self.url, f"the rest of the copy was answered {status}")

    def _release(self, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if reuse:
                self.client.give(*self._node, conn)
            else:
                conn.close()
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()

    def close(self) -> None:
        self._release(reuse=False)


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
