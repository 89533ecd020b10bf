"""The tracker's HTTP client against a real (in-process) storage node."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from services.mogilefs import httpclient
from services.mogilefs.config import StorageSpec
from services.mogilefs.storage import StorageNode


def node_on(tmp: str, port: int = 0) -> StorageNode:
    n = StorageNode(StorageSpec(port=port, docroot=tmp, devices=[1, 2]))
    n.start()
    return n


def test_head_reuses_connections_and_survives_a_node_restart(tmp_path: Any) -> None:
    node = node_on(str(tmp_path))
    port = node.port
    url = f"http://127.0.0.1:{port}/dev1/0/x.fid"
    heads = httpclient.HeadClient()
    try:
        try:
            assert httpclient.request("PUT", url, 5, body=b"hello")[0] == 200
            assert heads.size(url, 5) == 5
            assert heads.size(url, 5) == 5
            assert heads.idle("127.0.0.1", port) == 1
        finally:
            node.stop()
        # The idle connection is dead now; the next HEAD retries on a fresh one.
        node = node_on(str(tmp_path), port)
        try:
            assert heads.size(url, 5) == 5
            assert heads.size(url.replace("x.fid", "missing.fid"), 5) is None
            assert httpclient.head_size(url, 5) == 5
        finally:
            node.stop()
        with pytest.raises(httpclient.HTTPError):
            heads.size(url, 5)
    finally:
        heads.close()
    assert heads.idle("127.0.0.1", port) == 0


def test_copy_streams_and_hashes(tmp_path: Any) -> None:
    node = node_on(str(tmp_path))
    base = f"http://127.0.0.1:{node.port}"
    data = bytes(range(256)) * 9000
    try:
        httpclient.request("PUT", f"{base}/dev1/src.fid", 5, body=data)
        digest = httpclient.copy(f"{base}/dev1/src.fid", f"{base}/dev2/a/dst.fid", len(data), 5,
                                 md5_b64=httpclient.md5_b64(hashlib.md5(data).digest()),
                                 hashname="MD5")
        assert digest == hashlib.md5(data).digest()
        assert httpclient.file_digest(f"{base}/dev2/a/dst.fid", "MD5", 5) == digest
        with pytest.raises(httpclient.CopyError):
            httpclient.copy(f"{base}/dev1/src.fid", f"{base}/dev2/b.fid", len(data) + 1, 5)
        with pytest.raises(httpclient.CopyError):
            httpclient.copy(f"{base}/dev1/nosuch.fid", f"{base}/dev2/b.fid", 1, 5)
        # A wrong Content-MD5 is refused by the destination: nothing is stored there.
        with pytest.raises(httpclient.CopyError):
            httpclient.copy(f"{base}/dev1/src.fid", f"{base}/dev2/c.fid", len(data), 5,
                            md5_b64=httpclient.md5_b64(hashlib.md5(b"x").digest()))
        assert httpclient.head_size(f"{base}/dev2/c.fid", 5) is None
    finally:
        node.stop()
