"""The [cache] section and the local memcached helper."""

from __future__ import annotations

import tomllib

import pytest

from services.cache.local import memcached_argv, start_local_memcached
from services.cache.service import CacheConfig, create
from services.core.children import free_port
from services.core.config import ConfigError, parse

TOML = """
[cache]
default_pool = "default"
[cache.pools.default]
servers = ["10.0.0.1:11211:2", "10.0.0.2:11211"]
distribution = "ketama"
prefix = "app1:"
hash_with_prefix = true
eject = true
[cache.pools.sessions]
servers = ["127.0.0.1:11311"]
distribution = "modula"
compression = true
compression_type = "zlib"
"""


def test_parse_pools() -> None:
    config = parse(CacheConfig, tomllib.loads(TOML)["cache"], "cache")
    assert set(config.pools) == {"default", "sessions"}
    assert config.pools["default"].servers[0] == "10.0.0.1:11211:2"
    assert config.pools["sessions"].compression_type == "zlib"
    assert parse(CacheConfig, None, "cache").pools["default"].servers == ["127.0.0.1:11211"]


@pytest.mark.parametrize("pool,key", [
    ({"servers": ["nohost"]}, "cache.pools.p"),
    ({"servers": []}, "cache.pools.p"),
    ({"distribution": "random"}, "cache.pools.p"),
    ({"prefix": "has space"}, "cache.pools.p"),
    ({"compression_type": "lz4"}, "cache.pools.p"),
    ({"pool_size": 0}, "cache.pools.p"),
    ({"eject": "yes"}, "cache.pools.p.eject"),
    ({"unknown": 1}, "cache.pools.p.unknown"),
    ({"item_size_max_bytes": 100}, "cache.pools.p"),
    ({"max_value_bytes": 0}, "cache.pools.p"),
])
def test_bad_values_name_the_key(pool: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(CacheConfig, {"pools": {"p": pool}, "default_pool": "p"}, "cache")
    assert info.value.key == key


def test_beyond_pecl_keys() -> None:
    config = parse(CacheConfig, {
        "gearman_servers": ["127.0.0.1:4730"], "lease_ttl_ms": 5000, "xfetch_beta": 2,
        "pools": {"default": {"item_size_max_bytes": 4 * 1024 * 1024,
                              "max_value_bytes": 1 << 30}},
    }, "cache")
    assert config.gearman_servers == ["127.0.0.1:4730"]
    assert config.xfetch_beta == 2.0
    assert config.pools["default"].item_size_max_bytes == 4 * 1024 * 1024
    for bad in ({"gearman_servers": ["nohost"]}, {"xfetch_beta": 0}, {"poll_max_ms": 0}):
        with pytest.raises(ConfigError) as info:
            parse(CacheConfig, bad, "cache")
        assert info.value.key == "cache"


def test_default_pool_must_exist() -> None:
    with pytest.raises(ConfigError):
        parse(CacheConfig, {"pools": {"a": {}}}, "cache")


def test_memcached_argv_and_local_start() -> None:
    argv = memcached_argv(12345, item_size="5m", memory_mb=32)
    assert argv[1:9] == ["-l", "127.0.0.1", "-p", "12345", "-U", "0", "-m", "32"]
    assert "-I" in argv and argv[argv.index("-I") + 1] == "5m"
    child = start_local_memcached(free_port(), item_size="2m")
    try:
        handler = create(CacheConfig(pools={"default": parse(
            CacheConfig, {"pools": {"default": {"servers": [child.address]}}}, "cache"
        ).pools["default"]}))
        try:
            assert handler.put("big", b"x" * (1024 * 1024 + 100), None) == 0  # -I 2m took it
            assert handler.versions(None)[child.address]
        finally:
            handler.close()
    finally:
        child.stop()
