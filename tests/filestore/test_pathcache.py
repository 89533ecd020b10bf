"""The path cache in memcached: hits skip the tracker; overwrite, remove and rename invalidate."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from glammp.common.ttypes import ServiceError
from glammp.filestore.ttypes import PathOptions
from services.cache.service import PoolConfig
from services.core.children import Child, free_port
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import Store


class CountingTrackers:
    """Wraps the handler's tracker client to count commands by name."""

    def __init__(self, fs: Store) -> None:
        self.calls: dict[str, int] = {}
        inner = fs.handler.trackers.call

        def call(command: str, *args: Any, **kwargs: Any) -> Any:
            self.calls[command] = self.calls.get(command, 0) + 1
            return inner(command, *args, **kwargs)

        fs.handler.trackers.call = call  # type: ignore[method-assign]

    def __getitem__(self, command: str) -> int:
        return self.calls.get(command, 0)


@pytest.fixture
def cached(filestore: Callable[..., Store], mogilefs: DevCluster, memcached: Child) -> Store:
    return filestore(mogilefs, path_cache=PoolConfig(servers=[memcached.address]),
                     path_cache_ttl_s=60)


def _key(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex}"


def test_hot_get_paths_and_fetch_do_not_hit_the_tracker(cached: Store) -> None:
    key = _key("hot")
    count = CountingTrackers(cached)
    with cached.client() as c:
        c.store("", key, b"hot file", None)
        first = c.get_paths("", key, PathOptions(noverify=True))
        assert count["get_paths"] == 1
        for _ in range(5):
            assert c.get_paths("", key, PathOptions(noverify=True)) == first
            assert c.get_paths("", key, None)[0] == first[0]  # verified by a HEAD, not the tracker
        assert count["get_paths"] == 1
        assert cached.handler.paths is not None and cached.handler.paths.hits >= 10
        # fetch asks for up to three paths: a miss at most once (unless fewer copies exist
        # than two were asked for), then hits.
        assert c.fetch("", key, None) == b"hot file"
        after_first = count["get_paths"]
        assert after_first <= 2
        for _ in range(3):
            assert c.fetch("", key, None) == b"hot file"
        assert count["get_paths"] == after_first


def test_overwrite_remove_and_rename_invalidate(cached: Store) -> None:
    key, renamed = _key("inval"), _key("inval-renamed")
    with cached.client() as c:
        old = c.store("", key, b"version one", None)
        assert c.fetch("", key, None) == b"version one"
        old_paths = c.get_paths("", key, PathOptions(noverify=True))
        assert all(f"{old.fid:010d}" in p for p in old_paths)
        new = c.store("", key, b"version two", None)
        paths = c.get_paths("", key, PathOptions(noverify=True))
        assert all(f"{new.fid:010d}" in p for p in paths)
        assert c.fetch("", key, None) == b"version two"
        c.rename("", key, renamed)
        with pytest.raises(ServiceError) as e:
            c.get_paths("", key, PathOptions(noverify=True))
        assert e.value.code == 404
        assert c.fetch("", renamed, None) == b"version two"
        c.remove("", renamed)
        with pytest.raises(ServiceError) as e:
            c.get_paths("", renamed, PathOptions(noverify=True))
        assert e.value.code == 404
        with pytest.raises(ServiceError) as e:
            c.fetch("", renamed, None)
        assert e.value.code == 404


def test_invalidation_is_shared_between_instances(filestore: Callable[..., Store],
                                                  mogilefs: DevCluster,
                                                  memcached: Child) -> None:
    pool = PoolConfig(servers=[memcached.address])
    a = filestore(mogilefs, path_cache=pool)
    b = filestore(mogilefs, path_cache=pool)
    key = _key("shared")
    a.handler.store("", key, b"one", None)
    assert b.handler.fetch("", key, None) == b"one"
    a.handler.store("", key, b"two", None)
    assert b.handler.fetch("", key, None) == b"two"


def test_a_dead_cache_is_only_slower(filestore: Callable[..., Store],
                                     mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs, path_cache=PoolConfig(servers=[f"127.0.0.1:{free_port()}"]))
    key = _key("nocache")
    with fs.client() as c:
        c.store("", key, b"still works", None)
        assert c.fetch("", key, None) == b"still works"
        assert c.get_paths("", key, None)
        c.remove("", key)
        assert c.exists("", key) is False
