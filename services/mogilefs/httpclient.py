"""The tracker's HTTP calls to storage nodes: HEAD, small GET/PUT, DELETE and streamed copies.

Every call opens its own connection and closes it when done, whatever happens, so an
interrupted request (timeout, greenlet kill) never leaves a half-used connection behind. The
one exception is `HeadClient`, for get_paths' hot path, which keeps connections between
complete exchanges.
`timeout_s` bounds each socket operation (connect, every read and write), not the whole call.
Network failures raise `OSError` (including `TimeoutError`) or `http.client.HTTPException`;
HTTP status codes are returned, not raised.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

#: Size of one chunk of a streamed copy, in bytes: memory per copy stays at about this much.
COPY_CHUNK_BYTES = 1024 * 1024
#: Largest body `get_small` accepts, in bytes (usage files, test-write read-back).
SMALL_BODY_BYTES = 64 * 1024

HTTPError = (OSError, http.client.HTTPException)
#: Idle keep-alive connections a `HeadClient` keeps per storage node.
IDLE_PER_NODE = 8


class _Connection(http.client.HTTPConnection):
    """Connects to IPv4 literals (what hosts are registered with) without a resolver call:
    under gevent, getaddrinfo goes through a thread pool and costs a quarter of a HEAD."""

    def connect(self) -> None:
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            super().connect()
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _connect(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    conn = _Connection(parts.hostname or "", parts.port or 80, timeout=timeout_s)
    return conn, parts.path or "/"


def request(method: str, url: str, timeout_s: float, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, lower-cased headers, body up to SMALL_BODY_BYTES)."""
    conn, path = _connect(url, timeout_s)
    try:
        hdrs = dict(headers or {})
        if body is not None or method in ("PUT", "MKCOL"):
            hdrs.setdefault("Content-Length", str(len(body or b"")))
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = b"" if method == "HEAD" else resp.read(SMALL_BODY_BYTES)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def head_size(url: str, timeout_s: float) -> int | None:
    """The Content-Length a HEAD reports; None when missing (404, other status, no length)."""
    status, headers, _ = request("HEAD", url, timeout_s)
    if status != 200 or "content-length" not in headers:
        return None
    return int(headers["content-length"])


class HeadClient:
    """HEADs that keep their connections: get_paths checks a path on every call.

    After a complete exchange a connection is kept for the next HEAD to that node (at most
    IDLE_PER_NODE idle per node). One the node closed meanwhile is retried once on a fresh
    connection (HEAD is idempotent); any other failure closes it. `close()` drops them all.
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}

    def size(self, url: str, timeout_s: float) -> int | None:
        """As `head_size`."""
        parts = urlsplit(url)
        node = (parts.hostname or "", parts.port or 80)
        for attempt in (0, 1):
            idle = self._idle.get(node)
            conn = idle.pop() if idle and attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = _Connection(node[0], node[1], timeout=timeout_s)
            elif conn.sock is not None:
                conn.sock.settimeout(timeout_s)
            try:
                conn.request("HEAD", parts.path or "/")
                resp = conn.getresponse()
                resp.read()
            except BaseException as e:
                conn.close()
                if reused and isinstance(e, (ConnectionError, http.client.RemoteDisconnected)):
                    continue
                raise
            length = resp.getheader("Content-Length")
            keep = self._idle.setdefault(node, [])
            if resp.will_close or len(keep) >= IDLE_PER_NODE:
                conn.close()
            else:
                keep.append(conn)
            if resp.status != 200 or length is None:
                return None
            return int(length)
        raise ConnectionError(f"HEAD {url}: connection closed twice")

    def idle(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), []))

    def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def delete(url: str, timeout_s: float) -> int:
    return request("DELETE", url, timeout_s)[0]


class CopyError(Exception):
    """A streamed copy failed; the message says which side and why."""


def copy(src: str, dst: str, length: int, timeout_s: float, md5_b64: str | None = None,
         hashname: str | None = None) -> bytes | None:
    """Streams `src` to `dst` in COPY_CHUNK_BYTES chunks; returns the digest if `hashname` given.

    The source must answer 2xx with exactly `length` bytes. `md5_b64` is sent as Content-MD5 so a
    storage node that checks it rejects a corrupt copy. Raises CopyError or a network error.
    """
    sconn, spath = _connect(src, timeout_s)
    dconn, dpath = _connect(dst, timeout_s)
    digest = hashlib.new(_hashlib_name(hashname)) if hashname else None
    try:
        sconn.request("GET", spath)
        sresp = sconn.getresponse()
        if sresp.status // 100 != 2:
            raise CopyError(f"source {src} answered {sresp.status}")
        got = sresp.getheader("Content-Length")
        if got is None or int(got) != length:
            raise CopyError(f"source {src} length {got}, expected {length}")

        def chunks() -> Iterator[bytes]:
            left = length
            while left > 0:
                chunk = sresp.read(min(COPY_CHUNK_BYTES, left))
                if not chunk:
                    raise CopyError(f"source {src} ended {left} bytes early")
                if digest is not None:
                    digest.update(chunk)
                left -= len(chunk)
                yield chunk

        headers = {"Content-Length": str(length)}
        if md5_b64:
            headers["Content-MD5"] = md5_b64
        dconn.putrequest("PUT", dpath, skip_accept_encoding=True)
        for k, v in headers.items():
            dconn.putheader(k, v)
        dconn.endheaders()
        for chunk in chunks():
            dconn.send(chunk)
        dresp = dconn.getresponse()
        dresp.read(SMALL_BODY_BYTES)
        if dresp.status // 100 != 2:
            raise CopyError(f"destination {dst} answered {dresp.status}")
        return digest.digest() if digest is not None else None
    finally:
        sconn.close()
        dconn.close()


def md5_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def file_digest(url: str, hashname: str, timeout_s: float) -> bytes | None:
    """Hashes the body of a GET in chunks; None when the file is missing."""
    conn, path = _connect(url, timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        h = hashlib.new(_hashlib_name(hashname))
        while chunk := resp.read(COPY_CHUNK_BYTES):
            h.update(chunk)
        return h.digest()
    finally:
        conn.close()


def _hashlib_name(hashname: str) -> str:
    return {"MD5": "md5", "SHA-1": "sha1"}[hashname]
