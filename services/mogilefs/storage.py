"""The storage node (mogstored's HTTP side): WebDAV-ish file serving over `docroot/devN`.

Methods, as mogstored answers them (reference C.2):

=======  ==================================================================================
GET      200 with the file, or 206 for a single `Range`; 404 missing; 416 bad range
HEAD     as GET, with Content-Length and no body
PUT      creates parent directories; streams the body to a temp file (`devN/.tmp/`, emptied
         at start) then renames it, so a reader never sees half a file; 200, or 201 when a
         matching Content-MD5 was sent; 400 for a wrong Content-MD5 (nothing stored) or a
         path outside a `devN` directory
DELETE   204, or 404 when missing
MKCOL    201, or 405 when it exists
=======  ==================================================================================

Memory is bounded: bodies move in BODY_CHUNK_BYTES pieces in both directions. Each request
runs in its own greenlet (gevent.pywsgi); a client that drops mid-PUT leaves nothing behind:
its temp file is removed.

The usage writer refreshes `docroot/devN/usage` every `usage_interval_s` seconds in mogstored's
format (KiB figures from statvfs), for every `devN` directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

import gevent
import gevent.pool
from gevent.pywsgi import WSGIServer

from services.mogilefs.config import StorageSpec

log = logging.getLogger(__name__)

#: Bytes read or written per step of a body transfer.
BODY_CHUNK_BYTES = 1024 * 1024
#: Per-device directory of uploads in progress; emptied at start (a kill -9 leaves them).
TMP_DIR = ".tmp"

_DEV_DIR = re.compile(r"^dev\d+$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

StartResponse = Callable[..., Any]


def usage_text(path: str, device: str = "") -> str:
    """The `usage` file body for the directory `path` (KiB, like `df -P -k`)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize // 1024
    available = st.f_bavail * st.f_frsize // 1024
    used = total - available
    use = f"{(used * 100 + total - 1) // total if total else 0}%"
    fields = {"available": available, "device": device or path, "disk": path,
              "time": int(time.time()), "total": total, "use": use, "used": used}
    return "".join(f"{k}: {v}\n" for k, v in sorted(fields.items()))


def write_usage_files(docroot: str) -> None:
    """Writes `devN/usage` for every device directory under `docroot`, atomically."""
    for name in sorted(os.listdir(docroot)):
        dev = os.path.join(docroot, name)
        if _DEV_DIR.match(name) and os.path.isdir(dev):
            tmp = os.path.join(dev, f".usage.{os.getpid()}")
            with open(tmp, "w") as f:
                f.write(usage_text(dev))
            os.replace(tmp, os.path.join(dev, "usage"))


class _NoDelayServer(WSGIServer):
    """pywsgi writes a response's headers and body in separate sends; without TCP_NODELAY a
    kept-alive client's next read waits for the delayed ACK (~40 ms per GET)."""

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


class StorageNode:
    """A WSGI app plus server serving `spec.docroot` on `spec.host:spec.port`."""

    def __init__(self, spec: StorageSpec) -> None:
        self.spec = spec
        self.docroot = os.path.abspath(spec.docroot)
        os.makedirs(self.docroot, exist_ok=True)
        for devid in spec.devices:
            os.makedirs(os.path.join(self.docroot, f"dev{devid}"), exist_ok=True)
        for name in os.listdir(self.docroot):
            if _DEV_DIR.match(name):
                shutil.rmtree(os.path.join(self.docroot, name, TMP_DIR), ignore_errors=True)
        # An unbounded pool caps nothing; it lets stop() end kept-alive connections too,
        # which would otherwise go on being served by their handler greenlets.
        self.server = _NoDelayServer((spec.host, spec.port), self.app, log=None,
                                     error_log=log, spawn=gevent.pool.Pool())
        self._usage: gevent.Greenlet | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def start(self) -> None:
        write_usage_files(self.docroot)
        self.server.start()
        self._usage = gevent.spawn(self._usage_loop)

    def serve_forever(self) -> None:
        self.start()
        self.server.serve_forever()

    def stop(self) -> None:
        if self._usage is not None:
            self._usage.kill()
        self.server.stop(timeout=1)

    def _usage_loop(self) -> None:
        while True:
            gevent.sleep(self.spec.usage_interval_s)
            try:
                write_usage_files(self.docroot)
            except OSError:
                log.exception("writing usage files failed")

    # -- WSGI ------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        rel = unquote(environ.get("PATH_INFO", "/"))
        parts = [p for p in rel.split("/") if p]
        if ".." in parts or "\0" in rel:
            return _reply(start, "400 Bad Request", b"path contains ..\n")
        if TMP_DIR in parts:
            return _reply(start, "404 Not Found", b"not found\n")
        path = os.path.join(self.docroot, *parts)
        try:
            if method in ("GET", "HEAD"):
                return self._get(environ, start, path, method == "HEAD")
            if method == "PUT":
                return self._put(environ, start, parts, path)
            if method == "DELETE":
                if parts and os.path.isfile(path):
                    os.unlink(path)
                    return _reply(start, "204 No Content", b"")
                return _reply(start, "404 Not Found", b"not found\n")
            if method == "MKCOL":
                if not parts or os.path.exists(path):
                    return _reply(start, "405 Method Not Allowed", b"exists\n")
                os.makedirs(path)
                return _reply(start, "201 Created", b"")
        except OSError as e:
            log.warning("storage %s %s failed: %s", method, rel, e)
            return _reply(start, "500 Internal Server Error", b"I/O error\n")
        return _reply(start, "405 Method Not Allowed", b"method not allowed\n")

    def _get(self, environ: dict[str, Any], start: StartResponse, path: str,
             head: bool) -> Iterable[bytes]:
        if os.path.isdir(path):
            return _reply(start, "403 Forbidden", b"Directory listing disabled\n")
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the body iterator
        except FileNotFoundError:
            return _reply(start, "404 Not Found", b"not found\n")
        size = os.fstat(f.fileno()).st_size
        first, last, status = 0, size - 1, "200 OK"
        m = _RANGE.match(environ.get("HTTP_RANGE", "").strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                first = int(m.group(1))
                last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                first, last = max(size - int(m.group(2)), 0), size - 1
            if first >= size or first > last:
                f.close()
                start("416 Range Not Satisfiable",
                      [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
                return [b""]
            status = "206 Partial Content"
        headers = [("Content-Type", "application/octet-stream"),
                   ("Content-Length", str(last - first + 1)), ("Accept-Ranges", "bytes")]
        if status.startswith("206"):
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        start(status, headers)
        if head:
            f.close()
            return [b""]
        return _file_body(f, first, last - first + 1)

    def _put(self, environ: dict[str, Any], start: StartResponse, parts: list[str],
             path: str) -> Iterable[bytes]:
        if len(parts) < 2 or not _DEV_DIR.match(parts[0]):
            return _reply(start, "400 Bad Request",
                          b"Does not meet minimum directory requirement\n")
        if not os.path.isdir(os.path.join(self.docroot, parts[0])):
            return _reply(start, "400 Bad Request", b"no such device\n")
        want_md5 = _content_md5(environ.get("HTTP_CONTENT_MD5"))
        if want_md5 == b"":
            return _reply(start, "400 Bad Request", b"bad Content-MD5 header\n")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.makedirs(os.path.join(self.docroot, parts[0], TMP_DIR), exist_ok=True)
        tmp = os.path.join(self.docroot, parts[0], TMP_DIR, f"{uuid.uuid4().hex}.tmp")
        digest = hashlib.md5()
        stream = environ["wsgi.input"]
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(BODY_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            if want_md5 is not None and digest.digest() != want_md5:
                os.unlink(tmp)
                return _reply(start, "400 Bad Request", b"Content-MD5 mismatch\n")
            os.replace(tmp, path)
        except BaseException:
            # A client gone mid-body (or a timeout/kill): drop the partial upload.
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if want_md5 is not None:
            return _reply(start, "201 Created", b"")
        return _reply(start, "200 OK", b"")


def _content_md5(header: str | None) -> bytes | None:
    """The decoded Content-MD5 (None when absent, b"" when malformed)."""
    if header is None:
        return None
    try:
        raw = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    return raw if len(raw) == 16 else b""


def _reply(start: StartResponse, status: str, body: bytes) -> list[bytes]:
    start(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _file_body(f: Any, offset: int, length: int) -> Iterator[bytes]:
    try:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(BODY_CHUNK_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        f.close()
