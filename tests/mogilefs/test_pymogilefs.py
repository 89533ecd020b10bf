"""A third-party MogileFS client from PyPI (pymogilefs 0.1.2) against the tracker."""

from __future__ import annotations

import io

import pytest
from pymogilefs.backend import Backend
from pymogilefs.client import Client
from pymogilefs.exceptions import MogilefsError

from tests.mogilefs.conftest import Mog


def test_store_fetch_list_delete(mog: Mog) -> None:
    domain = mog.new_domain({"one": 1})
    client = Client([f"127.0.0.1:{mog.port}"], domain)
    blobs = {f"photos/{i:03d}.jpg": bytes([i]) * (1000 + i) for i in range(12)}
    for key, data in blobs.items():
        stored = client.store_file(io.BytesIO(data), key)
        assert stored["length"] == len(data)
    client.store_file(io.BytesIO(b"single copy"), "other/x", _class="one")
    for key, data in blobs.items():
        assert client.get_file(key).read() == data
    listed = client.list_keys(prefix="photos/", limit=5).data
    assert listed["key_count"] == 5
    assert [listed["keys"][i] for i in range(1, 6)] == sorted(blobs)[:5]
    rest = client.list_keys(prefix="photos/", after=listed["next_after"]).data
    assert rest["key_count"] == 7
    assert client.list_keys(prefix="nothing/").data["key_count"] == 0
    paths = client.get_paths("photos/000.jpg").data
    assert paths["path_count"] >= 1
    client.delete_file("photos/000.jpg")
    with pytest.raises(MogilefsError) as e:
        client.get_paths("photos/000.jpg")
    assert e.value.code == "unknown_key"
    assert client.list_keys(prefix="photos/").data["key_count"] == 11


def test_admin_calls(mog: Mog) -> None:
    backend = Backend([f"127.0.0.1:{mog.port}"])
    hosts = backend.get_hosts().data["hosts"]
    assert {h["hostname"] for h in hosts.values()} >= {"host1", "host2"}
    devices = backend.get_devices().data["devices"]
    assert len(devices) >= 4
    assert backend.create_domain("pyd").data == {"domain": "pyd"}
    assert backend.create_class("pyd", "c", 2).data["mindevcount"] == "2"
    assert backend.update_class("pyd", "c", 1).data["mindevcount"] == "1"
    assert backend.delete_class("pyd", "c").data == {"domain": "pyd", "class": "c"}
    assert backend.delete_domain("pyd").data == {"domain": "pyd"}
    with pytest.raises(MogilefsError) as e:
        backend.delete_domain("pyd")
    assert e.value.code == "domain_not_found"
