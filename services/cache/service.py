"""The Cache Thrift service: pecl/memcached's API over named memcached pools.

`create(CacheConfig)` builds one `Cluster` per configured pool; `CacheHandler` implements the
issue-3 methods of ``idl/cache.thrift``. Methods of the "cache beyond" issue
(``get_or_compute``, ``invalidate_namespace``, ``rate_limit``) and ``Target.ns`` are not
implemented yet: the methods are absent (the server answers 501) and ``Target.ns`` is a 501.

Deadlines: a call served by the Thrift server has a `CallContext` whose deadline bounds every
memcached request; a direct call (tests, embedding) uses `CacheConfig.default_deadline_ms`.
Errors follow the table in `services.cache.client`.

Oneway writes are buffered per Thrift connection (`services.cache.oneway`); every other call
first flushes its connection's buffer, so reads see earlier oneway writes of the same caller.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import glammp.cache.Cache
from glammp.base.ttypes import Status
from glammp.cache.ttypes import (
    Counter,
    CounterOptions,
    Entry,
    Item,
    ReadOptions,
    StoreResult,
    Target,
    ValueType,
    WriteOptions,
)
from glammp.cache.ttypes import Server as ServerInfo
from services.cache import codec, oneway
from services.cache.client import Cluster, Key
from services.cache.protocol import storage_command
from services.cache.ring import DISTRIBUTIONS, Node
from services.cache.server import (
    DEFAULT_BATCH_MAX_KEYS,
    DEFAULT_BATCHERS,
    DEFAULT_FAILURE_LIMIT,
    DEFAULT_POOL_SIZE,
    ServerSettings,
    ValueTuple,
)
from services.core import errors
from services.core.context import current_call
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

SERVICE_NAME = "Cache"
MODULE = glammp.cache.Cache
ORIGIN = "cache"

#: Per-method default deadlines (ms); other methods get the server default (5000).
DEADLINES_MS: dict[str, int] = {
    "get": 2000,
    "get_multi": 5000,
    "get_and_touch": 2000,
    "server_for_key": 1000,
    "servers": 1000,
    "stats": 10000,
    "versions": 5000,
    "flush": 10000,
}

#: Safe to retry after a timeout: repeating them leaves the same state.
IDEMPOTENT: frozenset[str] = frozenset(
    {
        "get", "get_multi", "get_and_touch", "put", "put_multi", "touch", "remove",
        "remove_multi", "server_for_key", "servers", "stats", "versions", "flush",
    }
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

_BUFFER_KEY = "cache.oneway"
_STORE_RESULTS = {
    b"STORED": StoreResult.STORED,
    b"NOT_STORED": StoreResult.NOT_STORED,
    b"EXISTS": StoreResult.EXISTS,
    b"NOT_FOUND": StoreResult.NOT_FOUND,
}
_I64 = 2**64
_U64_MASK = 2**64 - 1
_STATS_GROUP = re.compile(rb"[A-Za-z0-9_]{1,32}(?: [A-Za-z0-9_]{1,32}){0,2}\Z")


@dataclass(frozen=True)
class PoolConfig:
    """One named memcached pool (``[cache.pools.<name>]``).

    servers: ``host:port`` or ``host:port:weight``, in the order PHP's addServer calls use
    (the host string is hashed as written). distribution: ketama (PHP
    OPT_LIBKETAMA_COMPATIBLE), consistent, or modula (PHP's default). prefix: OPT_PREFIX_KEY;
    hash_with_prefix: OPT_HASH_WITH_PREFIX_KEY. eject: OPT_REMOVE_FAILED_SERVERS.
    compression: the default of WriteOptions.compress (PHP's OPT_COMPRESSION defaults to on).
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
    """The ``[cache]`` section: pools plus oneway-buffer and deadline defaults."""

    pools: dict[str, PoolConfig] = field(default_factory=lambda: {DEFAULT_POOL: PoolConfig()})
    default_pool: str = DEFAULT_POOL
    default_deadline_ms: int = DEFAULT_DEADLINE_MS
    async_max_ops: int = DEFAULT_ASYNC_MAX_OPS
    async_max_bytes: int = DEFAULT_ASYNC_MAX_BYTES
    async_delay_ms: int = DEFAULT_ASYNC_DELAY_MS
    async_timeout_ms: int = DEFAULT_ASYNC_TIMEOUT_MS

    def validate(self) -> None:
        if self.default_pool not in self.pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not in pools")
        if min(self.default_deadline_ms, self.async_max_ops, self.async_max_bytes,
               self.async_timeout_ms) < 1 or self.async_delay_ms < 0:
            raise ValueError("deadlines, async limits and delays must be positive")


def create(config: CacheConfig) -> CacheHandler:
    return CacheHandler(config)


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


class CacheHandler:
    """The Cache service's handler (see the module docstring)."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.pools = {name: build_cluster(name, p) for name, p in config.pools.items()}
        self.oneway_stats = oneway.WriteStats()

    # -- plumbing --------------------------------------------------------------------------

    def _deadline(self) -> float:
        ctx = current_call()
        if ctx is not None:
            return ctx.deadline
        return time.monotonic() + self.config.default_deadline_ms / 1000

    def _begin(self) -> None:
        """Flushes this connection's oneway writes before serving another call."""
        ctx = current_call()
        if ctx is not None:
            buf = ctx.connection.state.get(_BUFFER_KEY)
            if buf is not None and len(buf):
                buf.flush()

    def _pool(self, name: str | None) -> Cluster:
        name = name or self.config.default_pool
        try:
            return self.pools[name]
        except KeyError:
            raise errors.not_found(f"no cache pool named {name!r}", pool=name) from None

    def _target(self, target: Target | None) -> tuple[Cluster, str | None]:
        if target is None:
            return self._pool(None), None
        if target.ns is not None:
            raise errors.not_implemented("Target.ns (cache namespaces)")
        return self._pool(target.pool), target.server_key

    def _resolve(self, key: str, target: Target | None) -> tuple[Cluster, Key]:
        cluster, server_key = self._target(target)
        return cluster, cluster.resolve(key, server_key)

    def _item(self, key: str, found: ValueTuple | None, decompress: bool) -> Item:
        if found is None:
            return Item(key, False, b"", 0, ValueType.STRING, 0, 0)
        flags, payload, cas = found
        if cas >= 2**63:
            cas -= _I64
        if not flags:
            return Item(key, True, payload, 0, ValueType.STRING, 0, cas)
        value = codec.decode(payload, flags, key) if decompress else payload
        return Item(key, True, value, flags, codec.value_type(flags), codec.user_flags_of(flags),
                    cas)

    def _encode(self, cluster: Cluster, value: bytes, opts: WriteOptions | None,
                vtype: int | None = None, user_flags: int | None = None) -> tuple[bytes, int]:
        pool = self.config.pools[cluster.name]
        compress = pool.compression if opts is None or opts.compress is None else opts.compress
        if vtype is None:
            vtype = ValueType.STRING if opts is None or opts.type is None else opts.type
        if user_flags is None:
            user_flags = 0 if opts is None or opts.user_flags is None else opts.user_flags
        return codec.encode(
            _bytes(value), vtype, user_flags, compress, pool.compression_type,
            pool.compression_threshold,
        )

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, opts: ReadOptions | None) -> Item:
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        return self._item(key, cluster.get(k, self._deadline()), _decompress(opts))

    def get_multi(
        self, keys: Sequence[str], opts: ReadOptions | None, preserve_order: bool | None
    ) -> list[Item]:
        self._begin()
        cluster, server_key = self._target(opts.target if opts else None)
        names = list(dict.fromkeys(keys or []))
        resolved = cluster.resolve_many(names, server_key)
        if not resolved:
            return []
        found = cluster.get_many(resolved, self._deadline())
        decompress = _decompress(opts)
        items: list[Item] = []
        append = items.append
        for name, wire, _ in resolved:
            hit = found.get(wire)
            if hit is None:
                if preserve_order:
                    append(Item(name, False, b"", 0, ValueType.STRING, 0, 0))
            elif not hit[0] and hit[2] < 2**63:
                # The common case (a plain string item) without the general decoding path.
                append(Item(name, True, hit[1], 0, ValueType.STRING, 0, hit[2]))
            else:
                append(self._item(name, hit, decompress))
        return items

    def get_and_touch(self, key: str, ttl: int, opts: ReadOptions | None) -> Item:
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        found = cluster.get_and_touch(k, ttl or 0, self._deadline())
        return self._item(key, found, _decompress(opts))

    # -- writes ----------------------------------------------------------------------------

    def _store(self, verb: bytes, key: str, value: bytes, opts: WriteOptions | None,
               cas: int = 0) -> int:
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        payload, flags = self._encode(cluster, value, opts)
        ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
        reply = cluster.store(verb, k, payload, flags, ttl, self._deadline(), cas)
        return _store_result(reply, k)

    def put(self, key: str, value: bytes, opts: WriteOptions | None) -> int:
        return self._store(b"set", key, value, opts)

    def add(self, key: str, value: bytes, opts: WriteOptions | None) -> int:
        return self._store(b"add", key, value, opts)

    def replace(self, key: str, value: bytes, opts: WriteOptions | None) -> int:
        return self._store(b"replace", key, value, opts)

    def cas(self, key: str, value: bytes, cas: int, opts: WriteOptions | None) -> int:
        if not cas:
            raise errors.bad_request("cas token must be the non-zero token of a read",
                                     argument="cas", rule="!= 0")
        # Tokens are unsigned 64-bit; Item.cas carried ones above 2^63-1 as negative i64.
        return self._store(b"cas", key, value, opts, cas & _U64_MASK)

    def _concat(self, verb: bytes, key: str, value: bytes, target: Target | None) -> int:
        self._begin()
        cluster, k = self._resolve(key, target)
        deadline = self._deadline()
        # Appending raw bytes to a compressed item would corrupt it (pecl refuses append
        # outright while compression is on); look at the item's flags first.
        line = b"mg " + k.wire + b" f"
        head = k.server.call(lambda c, dl: c.command(line, dl), deadline, idempotent=True)
        if head.startswith(b"HD"):
            flags = int(next((t[1:] for t in head.split()[1:] if t.startswith(b"f")), b"0"))
            if codec.is_compressed(flags):
                raise errors.conflict(
                    f"{verb.decode()} refused: item {key!r} is compressed", key=key,
                    flags=flags,
                )
        elif head != b"EN":
            raise errors.bad_gateway(f"unexpected mg reply {head[:80]!r}", key=key)
        reply = cluster.store(verb, k, _bytes(value), 0, 0, deadline)
        return _store_result(reply, k)

    def append(self, key: str, value: bytes, target: Target | None) -> int:
        return self._concat(b"append", key, value, target)

    def prepend(self, key: str, value: bytes, target: Target | None) -> int:
        return self._concat(b"prepend", key, value, target)

    def put_multi(self, entries: Sequence[Entry], opts: WriteOptions | None) -> dict[str, int]:
        self._begin()
        cluster, server_key = self._target(opts.target if opts else None)
        ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
        items = []
        for e in entries or []:
            k = cluster.resolve(e.key, server_key)
            payload, flags = self._encode(cluster, e.value, opts, e.type, e.user_flags)
            items.append((k, payload, flags))
        if not items:
            return {}
        replies = cluster.store_many(items, ttl, b"set", self._deadline())
        out: dict[str, int] = {}
        for k, _, _ in items:
            reply = replies[k.wire]
            if isinstance(reply, ServiceError):
                raise reply
            out[k.name] = _store_result(reply, k)
        return out

    def touch(self, key: str, ttl: int, target: Target | None) -> bool:
        self._begin()
        cluster, k = self._resolve(key, target)
        return cluster.touch(k, ttl or 0, self._deadline())

    def remove(self, key: str, target: Target | None) -> bool:
        self._begin()
        cluster, k = self._resolve(key, target)
        return cluster.delete(k, self._deadline())

    def remove_multi(self, keys: Sequence[str], target: Target | None) -> dict[str, bool]:
        self._begin()
        cluster, server_key = self._target(target)
        resolved = cluster.resolve_many(list(dict.fromkeys(keys or [])), server_key)
        if not resolved:
            return {}
        replies = cluster.delete_many(resolved, self._deadline())
        out: dict[str, bool] = {}
        for k in resolved:
            reply = replies[k.wire]
            if isinstance(reply, ServiceError):
                raise reply
            if reply not in (b"DELETED", b"NOT_FOUND"):
                raise errors.bad_gateway(f"unexpected delete reply {reply[:80]!r}", key=k.name)
            out[k.name] = reply == b"DELETED"
        return out

    def _counter(self, key: str, delta: int, opts: CounterOptions | None,
                 decrement: bool) -> Counter:
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        initial = opts.initial if opts is not None else None
        ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
        value = cluster.arithmetic(k, delta, decrement, initial, ttl, self._deadline())
        if value is None:
            return Counter(found=False, value=0)
        return Counter(found=True, value=value - _I64 if value >= 2**63 else value)

    def increment(self, key: str, delta: int, opts: CounterOptions | None) -> Counter:
        return self._counter(key, delta, opts, decrement=False)

    def decrement(self, key: str, delta: int, opts: CounterOptions | None) -> Counter:
        return self._counter(key, delta, opts, decrement=True)

    # -- oneway ----------------------------------------------------------------------------

    def _buffer(self) -> oneway.WriteBuffer | None:
        ctx = current_call()
        if ctx is None:
            return None
        buf = ctx.connection.state.get(_BUFFER_KEY)
        if buf is None:
            buf = oneway.WriteBuffer(
                self.oneway_stats,
                max_ops=self.config.async_max_ops,
                max_bytes=self.config.async_max_bytes,
                delay_s=self.config.async_delay_ms / 1000,
                flush_timeout_s=self.config.async_timeout_ms / 1000,
            )
            ctx.connection.state[_BUFFER_KEY] = buf
            ctx.connection.on_close(buf.flush)
        return buf

    def _enqueue(self, write: oneway.PendingWrite) -> None:
        buf = self._buffer()
        if buf is None:
            oneway.send([write], self.oneway_stats, self.config.async_timeout_ms / 1000)
        else:
            buf.add(write)

    def put_async(self, key: str, value: bytes, opts: WriteOptions | None) -> None:
        try:
            cluster, k = self._resolve(key, opts.target if opts else None)
            payload, flags = self._encode(cluster, value, opts)
            ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
            if ttl < 0:
                raise errors.bad_request("ttl is negative", argument="ttl")
        except ServiceError as e:
            self._rejected(key, e)
            return
        command = storage_command(b"set", k.wire, flags, ttl, payload)
        self._enqueue(oneway.PendingWrite(k.server, key, command, frozenset({b"STORED"})))

    def remove_async(self, key: str, target: Target | None) -> None:
        try:
            _, k = self._resolve(key, target)
        except ServiceError as e:
            self._rejected(key, e)
            return
        self._enqueue(oneway.PendingWrite(
            k.server, key, b"delete " + k.wire + b"\r\n", frozenset({b"DELETED", b"NOT_FOUND"})
        ))

    def _rejected(self, key: str, e: ServiceError) -> None:
        self.oneway_stats.failed += 1
        self.oneway_stats.last_error = e.message
        log.warning("oneway write of %r rejected: %s", key[:80], e.message)

    # -- servers and admin -----------------------------------------------------------------

    def server_for_key(self, key: str, target: Target | None) -> ServerInfo:
        self._begin()
        _, k = self._resolve(key, target)
        node = k.server.node
        return ServerInfo(host=node.host, port=node.port, weight=node.weight)

    def servers(self, pool: str | None) -> list[ServerInfo]:
        self._begin()
        return [ServerInfo(host=n.host, port=n.port, weight=n.weight)
                for n in self._pool(pool).nodes]

    def stats(self, group: str | None, pool: str | None) -> dict[str, dict[str, str]]:
        self._begin()
        cluster = self._pool(pool)
        raw = (group or "").encode()
        if raw and not _STATS_GROUP.match(raw):
            raise errors.bad_request(
                f"bad stats group {group!r}", argument="group",
                rule="words of letters, digits and _ separated by single spaces, <= 64 bytes",
            )
        results = cluster.each_server(lambda c, dl: c.stats(raw, dl), self._deadline())
        return {addr: (r if not isinstance(r, ServiceError) else {"error": r.message})
                for addr, r in results.items()}

    def versions(self, pool: str | None) -> dict[str, str]:
        """Unreachable servers are listed with an empty version."""
        self._begin()
        results = self._pool(pool).each_server(lambda c, dl: c.version(dl), self._deadline())
        return {addr: ("" if isinstance(r, ServiceError) else r) for addr, r in results.items()}

    def flush(self, delay: int | None, pool: str | None) -> None:
        """flush_all on every server; the first failure is raised after all were tried."""
        self._begin()
        if delay is not None and delay < 0:
            raise errors.bad_request("delay is negative", argument="delay")
        line = b"flush_all %d" % (delay or 0)
        results = self._pool(pool).each_server(lambda c, dl: c.command(line, dl),
                                               self._deadline())
        for addr, r in results.items():
            if isinstance(r, ServiceError):
                raise r
            if r != b"OK":
                raise errors.bad_gateway(f"unexpected flush_all reply {r[:80]!r}", server=addr)

    # -- lifecycle -------------------------------------------------------------------------

    def health(self) -> tuple[int, str]:
        down = [s.address for c in self.pools.values() for s in c.servers if s.down]
        total = sum(len(c.servers) for c in self.pools.values())
        if not down:
            return Status.ALIVE, f"{total} memcached servers up"
        if len(down) == total:
            return Status.DEAD, "every memcached server is down"
        return Status.WARNING, f"memcached down: {', '.join(down)}"

    def counters(self) -> dict[str, int]:
        """Numbers for getCounters: oneway writes and server failures."""
        out = {
            "cache.oneway.sent": self.oneway_stats.sent,
            "cache.oneway.failed": self.oneway_stats.failed,
            "cache.oneway.flushes": self.oneway_stats.flushes,
        }
        for name, c in self.pools.items():
            for s in c.servers:
                out[f"cache.{name}.{s.address}.failures"] = s.failure_count
                out[f"cache.{name}.{s.address}.down"] = int(s.down)
                out[f"cache.{name}.{s.address}.batches"] = s.batches
                out[f"cache.{name}.{s.address}.batched_keys"] = s.batched_keys
        return out

    def close(self) -> None:
        for cluster in self.pools.values():
            cluster.close()


def _bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _decompress(opts: ReadOptions | None) -> bool:
    return opts is None or opts.decompress is None or bool(opts.decompress)


def _store_result(reply: bytes, key: Key) -> int:
    try:
        return _STORE_RESULTS[reply]
    except KeyError:
        raise errors.bad_gateway(
            f"unexpected store reply {reply[:80]!r} from {key.server.address}", key=key.name
        ) from None
