"""The storage node's HTTP behaviour (reference C.2/C.3), in-process on 127.0.0.1:0."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from services.mogilefs.config import StorageSpec
from services.mogilefs.storage import StorageNode, usage_text


@pytest.fixture
def node(tmp_path: object) -> Iterator[StorageNode]:
    n = StorageNode(StorageSpec(port=0, docroot=str(tmp_path), devices=[1, 2]))
    n.start()
    try:
        yield n
    finally:
        n.stop()


def call(node: StorageNode, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


FID = "/dev1/0/000/000/0000000001.fid"


def test_put_creates_parents_and_get_head_return_it(node: StorageNode) -> None:
    assert call(node, "PUT", FID, b"hello")[0] == 200
    status, headers, body = call(node, "GET", FID)
    assert (status, body) == (200, b"hello")
    status, headers, body = call(node, "HEAD", FID)
    assert (status, headers["content-length"], body) == (200, "5", b"")
    assert os.path.isfile(os.path.join(node.docroot, FID.lstrip("/")))


def test_ranges(node: StorageNode) -> None:
    call(node, "PUT", FID, b"0123456789")
    status, headers, body = call(node, "GET", FID, headers={"Range": "bytes=2-4"})
    assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
    assert call(node, "GET", FID, headers={"Range": "bytes=7-"})[2] == b"789"
    assert call(node, "GET", FID, headers={"Range": "bytes=-3"})[2] == b"789"
    assert call(node, "GET", FID, headers={"Range": "bytes=20-"})[0] == 416


def test_missing_file_and_delete(node: StorageNode) -> None:
    assert call(node, "GET", FID)[0] == 404
    assert call(node, "HEAD", FID)[0] == 404
    assert call(node, "DELETE", FID)[0] == 404
    call(node, "PUT", FID, b"x")
    assert call(node, "DELETE", FID)[0] == 204
    assert call(node, "GET", FID)[0] == 404


def test_content_md5(node: StorageNode) -> None:
    good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert call(node, "PUT", FID, b"data", {"Content-MD5": bad})[0] == 400
    assert call(node, "GET", FID)[0] == 404
    assert call(node, "PUT", FID, b"data", {"Content-MD5": good})[0] == 201
    assert call(node, "GET", FID)[2] == b"data"


def test_put_rules(node: StorageNode) -> None:
    assert call(node, "PUT", "/x.txt", b"x")[0] == 400
    assert call(node, "PUT", "/dev9/0/x.fid", b"x")[0] == 400
    assert call(node, "PUT", "/dev1/../../escape", b"x")[0] == 400
    assert call(node, "PUT", "/dev1/a/empty.fid")[0] == 200
    assert call(node, "GET", "/dev1/a/empty.fid")[2] == b""
    assert call(node, "GET", "/dev1/")[0] == 403


def test_chunked_put(node: StorageNode) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("PUT", FID, body=iter([b"ab", b"cd"]), encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    assert call(node, "GET", FID)[2] == b"abcd"


def test_mkcol(node: StorageNode) -> None:
    assert call(node, "MKCOL", "/dev1/0/")[0] == 201
    assert call(node, "MKCOL", "/dev1/0/")[0] == 405
    assert os.path.isdir(os.path.join(node.docroot, "dev1", "0"))


def test_usage_file(node: StorageNode) -> None:
    status, _, body = call(node, "GET", "/dev2/usage")
    assert status == 200
    fields = dict(line.split(": ", 1) for line in body.decode().splitlines())
    assert sorted(fields) == ["available", "device", "disk", "time", "total", "use", "used"]
    assert int(fields["total"]) == int(fields["used"]) + int(fields["available"]) > 0
    assert fields["use"].endswith("%")
    assert usage_text(node.docroot).startswith("available: ")


def test_client_dropping_mid_put_leaves_nothing(node: StorageNode) -> None:
    s = socket.create_connection(("127.0.0.1", node.port))
    s.sendall(f"PUT {FID} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"a" * 10)
    s.close()
    d = os.path.join(node.docroot, "dev1", ".tmp")

    def clean() -> bool:
        return not os.path.isdir(d) or not os.listdir(d)

    from services.core.children import wait_for

    wait_for(clean, 10, what="partial upload removed")
    assert call(node, "GET", FID)[0] == 404


def test_large_body_streams(node: StorageNode) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert call(node, "PUT", FID, data)[0] == 200
    assert call(node, "GET", FID)[2] == data


def test_leftover_temp_files_are_removed_at_start_and_never_served(tmp_path: Any) -> None:
    tmp_dir = os.path.join(str(tmp_path), "dev1", ".tmp")
    os.makedirs(tmp_dir)
    with open(os.path.join(tmp_dir, "x.tmp"), "wb") as f:
        f.write(b"half")
    n = StorageNode(StorageSpec(port=0, docroot=str(tmp_path), devices=[1]))
    n.start()
    try:
        assert not os.path.exists(tmp_dir)
        call(n, "PUT", "/dev1/.tmp/y", b"x")
        assert call(n, "GET", "/dev1/.tmp/y")[0] == 404
    finally:
        n.stop()
