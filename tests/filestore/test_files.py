"""Every Filestore method through Thrift against glammp's tracker and storage nodes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import Callable

import pytest

from glammp.common.ttypes import ServiceError
from glammp.filestore.ttypes import FetchOptions, PathOptions, StorageClass, StoreOptions
from services.core.children import wait_for
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import MD5_CLASS, Store

KIB = 1024
MIB = 1024 * KIB


def _key(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex}"


@pytest.fixture
def fs(filestore: Callable[..., Store], mogilefs: DevCluster) -> Store:
    return filestore(mogilefs)


def test_store_and_fetch_1kib_byte_exact(fs: Store) -> None:
    data = os.urandom(KIB)
    key = _key("one-kib")
    with fs.client() as c:
        info = c.store("", key, data, None)
        assert (info.key, info.length, info.storage_class) == (key, KIB, "default")
        assert info.fid > 0 and len(info.devids) == 1
        assert c.fetch("", key, None) == data
        assert c.exists("", key) is True
        got = c.info("", key)
        assert (got.fid, got.length, got.domain) == (info.fid, KIB, "glammp")


def test_store_and_fetch_10mib_byte_exact(fs: Store) -> None:
    data = os.urandom(10 * MIB)
    key = _key("ten-mib")
    with fs.client() as c:
        c.store("glammp", key, data, StoreOptions(storage_class="single"))
        assert c.fetch("glammp", key, FetchOptions()) == data
        assert c.info("glammp", key).storage_class == "single"


def test_overwrite_replaces_the_content_with_a_new_fid(fs: Store) -> None:
    key = _key("overwrite")
    with fs.client() as c:
        first = c.store("", key, b"first", None)
        second = c.store("", key, b"second version", None)
        assert second.fid != first.fid
        assert c.fetch("", key, None) == b"second version"
        assert c.info("", key).length == len(b"second version")


def test_empty_file(fs: Store) -> None:
    key = _key("empty")
    with fs.client() as c:
        assert c.store("", key, b"", None).length == 0
        assert c.fetch("", key, None) == b""
        assert c.fetch_range("", key, 0, 10) == b""


def test_range_reads(fs: Store) -> None:
    data = bytes(range(256)) * 40
    key = _key("range")
    with fs.client() as c:
        c.store("", key, data, None)
        assert c.fetch_range("", key, 0, 10) == data[:10]
        assert c.fetch_range("", key, 1000, 333) == data[1000:1333]
        assert c.fetch_range("", key, len(data) - 5, 100) == data[-5:]
        assert c.fetch_range("", key, len(data), 10) == b""
        assert c.fetch_range("", key, len(data) + 100, 10) == b""
        with pytest.raises(ServiceError) as e:
            c.fetch_range("", key, -1, 10)
        assert e.value.code == 400


def test_unknown_key_is_404_and_exists_false(fs: Store) -> None:
    key = _key("missing")
    with fs.client() as c:
        assert c.exists("", key) is False
        for call in (lambda: c.fetch("", key, None), lambda: c.info("", key),
                     lambda: c.fetch_range("", key, 0, 1), lambda: c.remove("", key),
                     lambda: c.get_paths("", key, None)):
            with pytest.raises(ServiceError) as e:
                call()
            assert e.value.code == 404, e.value
            assert e.value.details["tracker_error"] == "unknown_key"


def test_invalid_domain_and_key_are_400(fs: Store) -> None:
    with fs.client() as c:
        with pytest.raises(ServiceError) as e:
            c.store("no-such-domain", "k", b"x", None)
        assert (e.value.code, e.value.details["tracker_error"]) == (400, "unreg_domain")
        with pytest.raises(ServiceError) as e:
            c.store("", "", b"x", None)
        assert (e.value.code, e.value.details["argument"]) == (400, "key")
        with pytest.raises(ServiceError) as e:
            c.store("", "k" * 256, b"x", None)
        assert e.value.code == 400
        with pytest.raises(ServiceError) as e:
            c.store("", _key("bad-class"), b"x", StoreOptions(storage_class="nope"))
        assert e.value.code == 400


def test_remove(fs: Store) -> None:
    key = _key("remove")
    with fs.client() as c:
        c.store("", key, b"doomed", None)
        c.remove("", key)
        assert c.exists("", key) is False
        with pytest.raises(ServiceError) as e:
            c.remove("", key)
        assert e.value.code == 404


def test_rename(fs: Store) -> None:
    a, b, taken = _key("ren-a"), _key("ren-b"), _key("ren-taken")
    with fs.client() as c:
        c.store("", a, b"moving", None)
        c.store("", taken, b"in the way", None)
        c.rename("", a, b)
        assert c.exists("", a) is False
        assert c.fetch("", b, None) == b"moving"
        with pytest.raises(ServiceError) as e:
            c.rename("", b, taken)
        assert (e.value.code, e.value.details["tracker_error"]) == (409, "key_exists")
        # The connection to the tracker that answered key_exists is still good to use.
        assert c.fetch("", taken, None) == b"in the way"
        with pytest.raises(ServiceError) as e:
            c.rename("", _key("nothing"), _key("x"))
        assert e.value.code == 404


def test_keys_with_awkward_bytes_round_trip(fs: Store) -> None:
    with fs.client() as c:
        for key in ("a key with spaces", "amp&eq=semi;", "new\nline\ttab", "ünïcødé/ключ",
                    "plus+percent%2B", "../../etc/passwd"):
            key = key + uuid.uuid4().hex[:6]
            c.store("", key, key.encode(), None)
            assert c.fetch("", key, None) == key.encode()
            assert c.info("", key).key == key
            page = c.list_keys("", key, "", 10)
            assert page.keys == [key]


def test_get_paths_options(fs: Store) -> None:
    key = _key("paths")
    with fs.client() as c:
        c.store("", key, b"paths", None)
        paths = c.get_paths("", key, None)
        assert 1 <= len(paths) <= 2 and all(p.startswith("http://127.0.0.1:") for p in paths)
        assert len(c.get_paths("", key, PathOptions(pathcount=1))) == 1
        assert c.get_paths("", key, PathOptions(noverify=True))
        with pytest.raises(ServiceError) as e:
            c.get_paths("", key, PathOptions(pathcount=0))
        assert e.value.code == 400
    # Replication brings the second copy.
    wait_for(lambda: len(fs.handler.get_paths("", key, PathOptions(pathcount=3))) == 2, 30,
             what="second copy")


def test_info_counts_copies_and_checksum(fs: Store) -> None:
    data = b"checksummed content"
    key = _key("info")
    with fs.client() as c:
        info = c.store("", key, data, StoreOptions(storage_class=MD5_CLASS))
        md5 = "MD5:" + hashlib.md5(data).hexdigest()
        assert info.checksum == md5
        assert c.info("", key).checksum == md5
        plain = c.store("", _key("plain"), data, None)
        assert plain.checksum == ""
    wait_for(lambda: fs.handler.info("", key).copies == 2, 30, what="two copies")
    assert len(fs.handler.info("", key).devids) == 2


def test_store_with_a_wrong_checksum_is_refused(fs: Store) -> None:
    key = _key("badsum")
    with fs.client() as c:
        with pytest.raises(ServiceError) as e:
            c.store("", key, b"data", StoreOptions(checksum="MD5:" + "0" * 32))
        assert e.value.code == 1002
        with pytest.raises(ServiceError) as e:
            c.store("", key, b"data", StoreOptions(checksum="CRC:1"))
        assert e.value.code == 400
        good = "MD5:" + hashlib.md5(b"data").hexdigest()
        c.store("", key, b"data", StoreOptions(storage_class=MD5_CLASS, checksum=good))
        assert c.info("", key).checksum == good
        assert c.exists("", key)


def test_change_class(fs: Store) -> None:
    key = _key("reclass")
    with fs.client() as c:
        c.store("", key, b"x" * 100, None)
        c.change_class("", key, "triple")
        assert c.info("", key).storage_class == "triple"
        with pytest.raises(ServiceError) as e:
            c.change_class("", key, "no-such-class")
        assert e.value.code in (400, 404)


def test_fetch_over_the_one_call_limit_is_413(filestore: Callable[..., Store],
                                              mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs, max_file_bytes=1000)
    key = _key("big")
    with fs.client() as c:
        with pytest.raises(ServiceError) as e:
            c.store("", key, b"x" * 1001, None)
        assert e.value.code == 413
        c.store("", key, b"x" * 1000, None)
        assert c.fetch("", key, None) == b"x" * 1000
    # A file stored by another client with no such limit.
    other = _key("big-other")
    limited = fs.handler.config
    fs.handler.config = dataclasses.replace(limited, max_file_bytes=5000)
    fs.handler.store("", other, b"y" * 3000, None)
    fs.handler.config = limited
    with fs.client() as c:
        with pytest.raises(ServiceError) as e:
            c.fetch("", other, None)
        assert e.value.code == 413
        assert c.fetch_range("", other, 2000, 1000) == b"y" * 1000


def test_domains_and_classes_admin(fs: Store) -> None:
    domain = "dom-" + uuid.uuid4().hex[:8]
    with fs.client() as c:
        c.create_domain(domain)
        with pytest.raises(ServiceError) as e:
            c.create_domain(domain)
        assert e.value.code == 409
        c.create_class(domain, StorageClass("photos", 2, "MultipleHosts()", "MD5"))
        found = {d.name: d for d in c.domains()}
        classes = {k.name: k for k in found[domain].classes}
        assert classes["photos"].mindevcount == 2 and classes["photos"].hashtype == "MD5"
        assert "default" in classes
        assert MD5_CLASS in {k.name for k in found["glammp"].classes}
        c.update_class(domain, StorageClass("photos", 3))
        classes = {k.name: k for d in c.domains() if d.name == domain for k in d.classes}
        assert classes["photos"].mindevcount == 3
        with pytest.raises(ServiceError) as e:
            c.create_class(domain, StorageClass("bad", 0))
        assert e.value.code == 400
        key = _key("f")
        c.store(domain, key, b"in photos", StoreOptions(storage_class="photos"))
        with pytest.raises(ServiceError) as e:
            c.delete_class(domain, "photos")
        assert e.value.code == 409
        with pytest.raises(ServiceError) as e:
            c.delete_domain(domain)
        assert e.value.code == 409
        c.remove(domain, key)
        c.delete_class(domain, "photos")
        with pytest.raises(ServiceError) as e:
            c.delete_class(domain, "photos")
        assert e.value.code == 404
        c.delete_domain(domain)
        assert domain not in {d.name for d in c.domains()}


def test_deleted_copies_disappear_from_storage(fs: Store, mogilefs: DevCluster) -> None:
    key = _key("gc")
    with fs.client() as c:
        c.store("", key, b"garbage soon", None)
        paths = c.get_paths("", key, PathOptions(noverify=True))
        c.remove("", key)

    def gone() -> bool:
        return all(_status(p) == 404 for p in paths)

    wait_for(gone, 30, what="copies deleted by the tracker")


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)
