"""Chunked upload sessions: offsets, limits, checksums, abort, expiry, and a 200 MiB file."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable, Iterator

import pytest

from glammp.common.ttypes import ServiceError
from glammp.filestore.ttypes import StoreOptions
from services.core.children import wait_for
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import MD5_CLASS, Store

MIB = 1024 * 1024


@pytest.fixture
def fs(filestore: Callable[..., Store], mogilefs: DevCluster) -> Store:
    return filestore(mogilefs)


def _key(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex}"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _chunks(seed: int, total: int, size: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield rng.randbytes(n)
        sent += n


def test_upload_in_chunks_byte_exact(fs: Store) -> None:
    parts = [b"a" * 1000, b"b" * 5000, b"", b"c" * 3]
    key = _key("chunks")
    with fs.client() as c:
        up = c.begin_upload("", key, None)
        assert up.max_chunk > 0 and up.upload_id
        offset = 0
        for part in parts:
            offset = c.append_chunk(up.upload_id, offset, part)
        assert offset == 6003
        assert c.exists("", key) is False  # nothing visible before finish
        info = c.finish_upload(up.upload_id, None)
        assert (info.key, info.length) == (key, 6003)
        assert c.fetch("", key, None) == b"".join(parts)
        with pytest.raises(ServiceError) as e:
            c.append_chunk(up.upload_id, offset, b"late")
        assert e.value.code == 404


def test_offsets_repeat_overlap_and_gap(fs: Store) -> None:
    key = _key("offsets")
    with fs.client() as c:
        up = c.begin_upload("", key, None)
        assert c.append_chunk(up.upload_id, 0, b"0123456789") == 10
        # A retried chunk is acknowledged without being written again.
        assert c.append_chunk(up.upload_id, 0, b"0123456789") == 10
        # An overlapping one adds only its tail.
        assert c.append_chunk(up.upload_id, 5, b"56789abc") == 13
        with pytest.raises(ServiceError) as e:
            c.append_chunk(up.upload_id, 20, b"gap")
        assert (e.value.code, e.value.details["received"]) == (409, "13")
        c.finish_upload(up.upload_id, None)
        assert c.fetch("", key, None) == b"0123456789abc"


def test_checksums_at_finish(fs: Store) -> None:
    data = b"verified by the tracker" * 100
    good = "MD5:" + hashlib.md5(data).hexdigest()
    key = _key("sum")
    with fs.client() as c:
        up = c.begin_upload("", key, StoreOptions(storage_class=MD5_CLASS))
        c.append_chunk(up.upload_id, 0, data)
        info = c.finish_upload(up.upload_id, StoreOptions(checksum=good))
        assert info.checksum == good and info.storage_class == MD5_CLASS
        assert c.info("", key).checksum == good
        bad = _key("badsum")
        up = c.begin_upload("", bad, StoreOptions(checksum="MD5:" + "1" * 32))
        c.append_chunk(up.upload_id, 0, data)
        with pytest.raises(ServiceError) as e:
            c.finish_upload(up.upload_id, None)
        assert e.value.code == 1002
        assert c.exists("", bad) is False


def test_abort_and_limits(filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs, upload_max_sessions=2, upload_max_chunk_bytes=1000)
    key = _key("abort")
    with fs.client() as c:
        a = c.begin_upload("", key, None)
        assert a.max_chunk == 1000
        with pytest.raises(ServiceError) as e:
            c.append_chunk(a.upload_id, 0, b"x" * 1001)
        assert e.value.code == 413
        c.append_chunk(a.upload_id, 0, b"x" * 1000)
        b = c.begin_upload("", _key("second"), None)
        with pytest.raises(ServiceError) as e:
            c.begin_upload("", _key("third"), None)
        assert e.value.code == 429 and e.value.retryable
        c.abort_upload(a.upload_id)
        c.abort_upload(b.upload_id)
        with pytest.raises(ServiceError) as e:
            c.abort_upload(a.upload_id)
        assert e.value.code == 404
        assert c.exists("", key) is False
        c.begin_upload("", _key("room again"), None)


def test_idle_session_expires(filestore: Callable[..., Store], mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs, upload_idle_ttl_s=0.3)
    with fs.client() as c:
        up = c.begin_upload("", _key("idle"), None)
        c.append_chunk(up.upload_id, 0, b"partial")
        wait_for(lambda: not fs.handler.uploads.sessions, 30, what="session expired")
        assert fs.handler.uploads.expired >= 1
        with pytest.raises(ServiceError) as e:
            c.append_chunk(up.upload_id, 7, b"more")
        assert e.value.code == 404


def test_200mib_upload_and_download_with_flat_memory(fs: Store) -> None:
    total, chunk = 200 * MIB, 4 * MIB
    key = _key("huge")
    want = hashlib.md5()
    baseline = _rss_bytes()
    peak = baseline
    with fs.client(timeout_s=600) as c:
        up = c.begin_upload("", key, None)
        offset = 0
        for data in _chunks(7, total, chunk):
            want.update(data)
            offset = c.append_chunk(up.upload_id, offset, data)
            peak = max(peak, _rss_bytes())
        info = c.finish_upload(up.upload_id, None)
        assert info.length == total
        got = hashlib.md5()
        offset = 0
        while offset < total:
            data = c.fetch_range("", key, offset, chunk)
            assert data, f"empty read at {offset}"
            got.update(data)
            offset += len(data)
            peak = max(peak, _rss_bytes())
        assert offset == total
        assert c.fetch_range("", key, total, chunk) == b""
        assert got.hexdigest() == want.hexdigest()
        c.remove("", key)
    # Client and service share this process: both hold a few chunks at most, never the file.
    assert peak - baseline < 80 * MIB, f"RSS grew by {(peak - baseline) // MIB} MiB"
