"""The ``[cache]`` configuration: named memcached pools and the service's defaults.

`PoolConfig` is one ``[cache.pools.<name>]`` table, `CacheConfig` the ``[cache]`` section;
both are parsed by `services.core.config.parse`, and `validate()` failures stop start-up with
the key. `build_cluster` turns a pool into the `Cluster` that talks to its servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.cache import codec, oneway, readthrough
from services.cache.client import MAX_RELATIVE_TTL_S, Cluster
from services.cache.hotcache import DEFAULT_HOT_MAX_ITEMS, DEFAULT_HOT_TTL_MS
from services.cache.largevalue import (
    CHUNK_HEADROOM_BYTES,
    DEFAULT_ITEM_SIZE_MAX_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
)
from services.cache.ring import DISTRIBUTIONS, Node
from services.cache.routes import DEFAULT_GUTTER_TTL_S
from services.cache.server import (
    DEFAULT_BATCH_MAX_KEYS,
    DEFAULT_BATCHERS,
    DEFAULT_FAILURE_LIMIT,
    DEFAULT_POOL_SIZE,
    ServerSettings,
)

DEFAULT_POOL = "default"
#: The server a pool uses when the config names none: a local memcached on its default port.
DEFAULT_SERVER = "127.0.0.1:11211"
DEFAULT_DEADLINE_MS = 5000
DEFAULT_CONNECT_TIMEOUT_MS = 1000
DEFAULT_IO_TIMEOUT_MS = 2000
DEFAULT_RETRY_TIMEOUT_MS = 2000
DEFAULT_ASYNC_MAX_OPS = oneway.DEFAULT_MAX_OPS
DEFAULT_ASYNC_MAX_BYTES = oneway.DEFAULT_MAX_BYTES
DEFAULT_ASYNC_DELAY_MS = 5
DEFAULT_ASYNC_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class PoolConfig:
    """One named memcached pool (``[cache.pools.<name>]``).

    servers: ``host:port`` or ``host:port:weight``, in the order PHP's addServer calls use
    (the host string is hashed as written). distribution: ketama (PHP
    OPT_LIBKETAMA_COMPATIBLE), consistent, or modula (PHP's default). prefix: OPT_PREFIX_KEY;
    hash_with_prefix: OPT_HASH_WITH_PREFIX_KEY. eject: OPT_REMOVE_FAILED_SERVERS.
    compression: the default of WriteOptions.compress (PHP's OPT_COMPRESSION defaults to on).
    item_size_max_bytes: the servers' ``-I`` (larger values are split into chunks);
    max_value_bytes: the largest value accepted (413 above it). hot_prefixes, hot_ttl_ms,
    hot_max_items: the in-process L1 (`services.cache.hotcache`). warm_from: the pool this
    one replaces, read on a miss (`services.cache.routes`). gutter, gutter_ttl_s: the pool
    that serves a failed server's keys for a while (`services.cache.routes`). replicas: pools
    that mirror this one (`services.cache.routes`).
    """

    servers: list[str] = field(default_factory=lambda: [DEFAULT_SERVER])
    distribution: str = "ketama"
    prefix: str = ""
    hash_with_prefix: bool = False
    eject: bool = False
    failure_limit: int = DEFAULT_FAILURE_LIMIT
    retry_timeout_ms: int = DEFAULT_RETRY_TIMEOUT_MS
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    io_timeout_ms: int = DEFAULT_IO_TIMEOUT_MS
    pool_size: int = DEFAULT_POOL_SIZE
    batch_max_keys: int = DEFAULT_BATCH_MAX_KEYS
    batchers: int = DEFAULT_BATCHERS
    compression: bool = False
    compression_type: str = "fastlz"
    compression_threshold: int = codec.DEFAULT_COMPRESSION_THRESHOLD
    item_size_max_bytes: int = DEFAULT_ITEM_SIZE_MAX_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    hot_prefixes: list[str] = field(default_factory=list)
    hot_ttl_ms: int = DEFAULT_HOT_TTL_MS
    hot_max_items: int = DEFAULT_HOT_MAX_ITEMS
    warm_from: str = ""
    gutter: str = ""
    replicas: list[str] = field(default_factory=list)
    gutter_ttl_s: int = DEFAULT_GUTTER_TTL_S

    def validate(self) -> None:
        if not self.servers:
            raise ValueError("servers: at least one server is needed")
        for spec in self.servers:
            Node.parse(spec)
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if self.compression_type not in codec.COMPRESSION_TYPES:
            raise ValueError(
                f"compression_type must be one of {', '.join(codec.COMPRESSION_TYPES)}"
            )
        codec.check_prefix(self.prefix)
        for name in ("failure_limit", "pool_size", "batch_max_keys", "batchers",
                     "retry_timeout_ms", "connect_timeout_ms", "io_timeout_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.compression_threshold < 0:
            raise ValueError("compression_threshold must be >= 0")
        if self.item_size_max_bytes < 2 * CHUNK_HEADROOM_BYTES:
            raise ValueError(f"item_size_max_bytes must be >= {2 * CHUNK_HEADROOM_BYTES}")
        if self.max_value_bytes < 1:
            raise ValueError("max_value_bytes must be >= 1")
        if not 1 <= self.gutter_ttl_s <= MAX_RELATIVE_TTL_S:
            raise ValueError("gutter_ttl_s must be 1..2592000")
        if self.hot_ttl_ms < 1 or self.hot_max_items < 1:
            raise ValueError("hot_ttl_ms and hot_max_items must be >= 1")
        if any(not p for p in self.hot_prefixes):
            raise ValueError("hot_prefixes: an empty prefix would make every key hot")

    def settings(self) -> ServerSettings:
        return ServerSettings(
            pool_size=self.pool_size,
            connect_timeout_s=self.connect_timeout_ms / 1000,
            io_timeout_s=self.io_timeout_ms / 1000,
            failure_limit=self.failure_limit,
            retry_timeout_s=self.retry_timeout_ms / 1000,
            batch_max_keys=self.batch_max_keys,
            batchers=self.batchers,
        )


@dataclass(frozen=True)
class CacheConfig:
    """The ``[cache]`` section: pools plus oneway-buffer and deadline defaults, and the
    read-through settings: `gearman_servers` (``host:port``, where get_or_compute submits
    loaders; none disables it), `lease_ttl_ms`, `poll_max_ms`, `load_timeout_ms` and
    `xfetch_beta` (see `services.cache.readthrough`)."""

    pools: dict[str, PoolConfig] = field(default_factory=lambda: {DEFAULT_POOL: PoolConfig()})
    default_pool: str = DEFAULT_POOL
    default_deadline_ms: int = DEFAULT_DEADLINE_MS
    async_max_ops: int = DEFAULT_ASYNC_MAX_OPS
    async_max_bytes: int = DEFAULT_ASYNC_MAX_BYTES
    async_delay_ms: int = DEFAULT_ASYNC_DELAY_MS
    async_timeout_ms: int = DEFAULT_ASYNC_TIMEOUT_MS
    gearman_servers: list[str] = field(default_factory=list)
    lease_ttl_ms: int = readthrough.DEFAULT_LEASE_TTL_MS
    poll_max_ms: int = readthrough.DEFAULT_POLL_MAX_MS
    load_timeout_ms: int = readthrough.DEFAULT_LOAD_TIMEOUT_MS
    xfetch_beta: float = readthrough.DEFAULT_BETA

    def validate(self) -> None:
        if self.default_pool not in self.pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not in pools")
        for name, pool in self.pools.items():
            for route in ("warm_from", "gutter", "replicas"):
                value = getattr(pool, route)
                for other in value if isinstance(value, list) else [value]:
                    if other and (other == name or other not in self.pools):
                        raise ValueError(f"pools.{name}.{route} {other!r} must name another "
                                         "pool")
        if min(self.default_deadline_ms, self.async_max_ops, self.async_max_bytes,
               self.async_timeout_ms) < 1 or self.async_delay_ms < 0:
            raise ValueError("deadlines, async limits and delays must be positive")
        if min(self.lease_ttl_ms, self.poll_max_ms, self.load_timeout_ms) < 1:
            raise ValueError("lease_ttl_ms, poll_max_ms and load_timeout_ms must be >= 1")
        if not self.xfetch_beta > 0:
            raise ValueError("xfetch_beta must be > 0")
        for server in self.gearman_servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"gearman_servers: {server!r} is not host:port")


def build_cluster(name: str, pool: PoolConfig) -> Cluster:
    return Cluster(
        name,
        [Node.parse(s) for s in pool.servers],
        distribution=pool.distribution,
        prefix=codec.check_prefix(pool.prefix),
        hash_with_prefix=pool.hash_with_prefix,
        eject=pool.eject,
        settings=pool.settings(),
    )


