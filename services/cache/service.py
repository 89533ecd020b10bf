"""The Cache Thrift service: pecl/memcached's API over named memcached pools, and more.

`create(CacheConfig)` builds one `Cluster` per configured pool; `CacheHandler` implements
``idl/cache.thrift``: pecl/memcached's methods, and beyond them namespaces (`Target.ns`,
`invalidate_namespace`; see `services.cache.namespace`), fixed-window rate limits
(`services.cache.ratelimit`), values larger than a memcached item (split transparently, see
`services.cache.largevalue`), read-through with stampede protection (`get_or_compute`,
`services.cache.readthrough`), an in-process L1 for hot prefixes (`services.cache.hotcache`)
and routes between pools: replicas, gutter and warm-up (`services.cache.routes`).

get_multi returns what it got: keys on a server that failed are misses (counted in
``cache.<pool>.partial_misses``), as pecl's getMulti returns the items it could read; only
when every server asked failed is the first failure raised.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict

import glammp.cache.Cache
from glammp.base.ttypes import Status
from glammp.cache.ttypes import (
    Counter,
    CounterOptions,
    Entry,
    Item,
    Loader,
    RateLimit,
    ReadOptions,
    StoreResult,
    Target,
    ValueType,
    WriteOptions,
)
from glammp.cache.ttypes import Server as ServerInfo
from services.cache import codec, namespace, oneway, ratelimit
from services.cache.client import Cluster, Key
from services.cache.config import (  # re-exported: the filestore and tests import them here
    DEFAULT_POOL,
    DEFAULT_SERVER,
    CacheConfig,
    PoolConfig,
    build_cluster,
)
from services.cache.items import ItemRow, ItemStore, as_bytes, encode_item_list
from services.cache.protocol import storage_command
from services.cache.readthrough import ReadThrough, Stored
from services.cache.routes import Routes
from services.cache.server import ValueTuple
from services.core import errors
from services.core.context import current_call
from services.core.errors import ServiceError

__all__ = ["DEFAULT_POOL", "DEFAULT_SERVER", "CacheConfig", "CacheHandler", "PoolConfig",
           "build_cluster", "create"]

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
    # Callers of get_or_compute may wait for a loader.
    "get_or_compute": 30000,
}

#: Safe to retry after a timeout: repeating them leaves the same state.
IDEMPOTENT: frozenset[str] = frozenset(
    {
        "get", "get_multi", "get_and_touch", "put", "put_multi", "touch", "remove",
        "remove_multi", "server_for_key", "servers", "stats", "versions", "flush",
        "get_or_compute", "invalidate_namespace", "invalidate",
    }
)

_STORE_RESULTS = {
    b"STORED": StoreResult.STORED,
    b"NOT_STORED": StoreResult.NOT_STORED,
    b"EXISTS": StoreResult.EXISTS,
    b"NOT_FOUND": StoreResult.NOT_FOUND,
}
_I64 = 2**64
_U64_MASK = 2**64 - 1
_STATS_GROUP = re.compile(rb"[A-Za-z0-9_]{1,32}(?: [A-Za-z0-9_]{1,32}){0,2}\Z")


def create(config: CacheConfig) -> CacheHandler:
    return CacheHandler(config)


class CacheHandler:
    """The Cache service's handler (see the module docstring)."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.pools = {name: build_cluster(name, p) for name, p in config.pools.items()}
        self.items = ItemStore(config)
        self.large = self.items.large
        self.hot = self.items.hot
        self.partial_misses = dict.fromkeys(config.pools, 0)
        self.routes = Routes(self.pools, config, self.items)
        self.oneway_stats = oneway.WriteStats()
        self.oneway = oneway.ConnectionBuffers(
            self.oneway_stats, config.async_max_ops, config.async_max_bytes,
            config.async_delay_ms / 1000, config.async_timeout_ms / 1000,
        )
        self.readthrough = ReadThrough(
            self.items, list(config.gearman_servers), lease_ttl_ms=config.lease_ttl_ms,
            poll_max_ms=config.poll_max_ms, load_timeout_ms=config.load_timeout_ms,
            beta=config.xfetch_beta,
        )

    # -- plumbing --------------------------------------------------------------------------

    def _deadline(self) -> float:
        ctx = current_call()
        if ctx is not None:
            return ctx.deadline
        return time.monotonic() + self.config.default_deadline_ms / 1000

    def _begin(self) -> None:
        """Flushes this connection's oneway writes before serving another call."""
        self.oneway.flush_current()

    def _pool(self, name: str | None) -> Cluster:
        name = name or self.config.default_pool
        try:
            return self.pools[name]
        except KeyError:
            raise errors.not_found(f"no cache pool named {name!r}", pool=name) from None

    def _target(self, target: Target | None) -> tuple[Cluster, str | None, str]:
        """(pool, server key, namespace key prefix) of a call; the prefix costs one round trip
        to the namespace's version counter (`services.cache.namespace`)."""
        if target is None:
            return self._pool(None), None, ""
        cluster = self._pool(target.pool)
        ns = ""
        if target.ns is not None:
            ns = namespace.key_prefix(cluster, target.ns, self._deadline())
        return cluster, target.server_key, ns

    def _resolve(self, key: str, target: Target | None) -> tuple[Cluster, Key]:
        cluster, server_key, ns = self._target(target)
        return cluster, cluster.resolve(key, server_key, ns)

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, opts: ReadOptions | None) -> Item:
        """Through the pool's L1 for hot keys, and its warm-up pool on a miss."""
        self._begin()
        cluster, server_key, ns = self._target(opts.target if opts else None)
        k = cluster.resolve(key, server_key, ns)
        hot = self.hot[cluster.name]
        wanted = hot.wanted(key)
        wire = k.wire
        if wanted:
            copy = hot.get(wire)
            if copy is not None:
                return self.items.item(key, copy, _decompress(opts))
            epoch = hot.epoch
        deadline = self._deadline()
        try:
            hit = cluster.get(k, deadline)
        except ServiceError as e:
            # Read on (large values, warm-up) as the pool that answered; L1 keeps its key.
            cluster, k, hit = self.routes.read_elsewhere(cluster, k, e, deadline)
        found: Stored | ValueTuple | None = hit
        if hit is not None and hit[0] & codec.INTERNAL_FLAGS:
            found = self.items.read(cluster, k, hit, deadline)
        elif hit is None:
            old = self.config.pools[cluster.name].warm_from
            if old and not ns:
                found = self.routes.warmup.one(cluster, self.pools[old], k, server_key,
                                               deadline)
        if wanted and found is not None:
            hot.put(wire, found, epoch)
        return self.items.item(key, found, _decompress(opts))

    def get_multi(
        self, keys: Sequence[str], opts: ReadOptions | None, preserve_order: bool | None
    ) -> list[Item]:
        """Hits (and, with preserve_order, misses) in request order. Keys on a server that
        failed are misses, counted in ``cache.<pool>.partial_misses``; the first failure is
        raised only when every server asked failed. Hot keys are answered from the L1."""
        return [r if type(r) is Item else Item(*r)
                for r in self._multi_rows(keys, opts, preserve_order)]

    def get_multi_wire(
        self, keys: Sequence[str], opts: ReadOptions | None, preserve_order: bool | None
    ) -> bytes:
        """`get_multi`'s answer encoded for the binary fast path (see services.core.dispatch):
        plain hits and misses go to the wire without becoming `Item` objects."""
        return encode_item_list(self._multi_rows(keys, opts, preserve_order))

    def _multi_rows(
        self, keys: Sequence[str], opts: ReadOptions | None, preserve_order: bool | None
    ) -> list[Item | ItemRow]:
        self._begin()
        cluster, server_key, ns = self._target(opts.target if opts else None)
        names = list(dict.fromkeys(keys or []))
        resolved = cluster.resolve_many(names, server_key, ns)
        if not resolved:
            return []
        deadline = self._deadline()
        hot = self.hot[cluster.name]
        epoch = hot.epoch
        copies: dict[bytes, Stored | ValueTuple] = {}
        if hot.prefixes:
            for k in resolved:
                copy = hot.get(k.wire) if hot.wanted(k.name) else None
                if copy is not None:
                    copies[k.wire] = copy
        asked = [k for k in resolved if k.wire not in copies] if copies else resolved
        found, failed = cluster.fetch_many(asked, deadline) if asked else ({}, {})
        if failed:
            lost = self.routes.fetch_elsewhere(cluster, asked, failed, found, deadline)
            if lost and len(lost) == len(asked):
                raise next(iter(failed.values()))
            self.partial_misses[cluster.name] += len(lost)
        old = self.config.pools[cluster.name].warm_from
        warmed: dict[bytes, Stored] = {}
        if old and not ns:
            misses = [k for k in asked if k.wire not in found and k.server not in failed]
            if misses:
                warmed = self.routes.warmup.many(cluster, self.pools[old], misses,
                                                 server_key, deadline)
        decompress = _decompress(opts)
        items: list[Item | ItemRow] = []
        append = items.append
        for k in resolved:
            name = k.name
            hit = found.get(k.wire)
            if hit is None:
                copy = warmed.get(k.wire) or copies.get(k.wire)
                if copy is not None:
                    append(self.items.item(name, copy, decompress))
                elif preserve_order:
                    append((name, False, b"", 0, ValueType.STRING, 0, 0))
                continue
            if hot.prefixes and not hit[0] & codec.INTERNAL_FLAGS and hot.wanted(name):
                hot.put(k.wire, hit, epoch)
            if not hit[0] and hit[2] < 2**63:
                # The common case (a plain string item) without the general decoding path.
                append((name, True, hit[1], 0, ValueType.STRING, 0, hit[2]))
            elif hit[0] & codec.INTERNAL_FLAGS:
                stored = self.items.read(cluster, k, hit, deadline)
                item = self.items.item(name, stored, decompress)
                if item.found or preserve_order:
                    append(item)
            else:
                append(self.items.item(name, hit, decompress))
        return items

    def get_and_touch(self, key: str, ttl: int, opts: ReadOptions | None) -> Item:
        """Also touches a large value's chunks, so they live as long as its manifest."""
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        deadline = self._deadline()
        found = cluster.get_and_touch(k, ttl or 0, deadline)
        stored = self.items.read(cluster, k, found, deadline, b"gats %d" % (ttl or 0))
        return self.items.item(key, stored, _decompress(opts))

    # -- writes ----------------------------------------------------------------------------

    def _store(self, verb: bytes, key: str, value: bytes, opts: WriteOptions | None,
               cas: int = 0) -> int:
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        self.large[cluster.name].check_size(len(as_bytes(value)), key)
        payload, flags = self.items.encode(cluster, value, opts)
        ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
        deadline = self._deadline()
        replicas = self.routes.replicas

        def mirror(c: Cluster) -> bytes:
            return self.items.write(b"set", c, c.adopt(k, cluster), payload, flags, ttl, deadline)

        try:
            reply = self.items.write(verb, cluster, k, payload, flags, ttl, deadline, cas)
        except ServiceError as e:
            if verb == b"set" and replicas.of(cluster):
                return _store_result(replicas.first_success(replicas.mirror(cluster, mirror), e),
                                     k)
            gutter = None if verb == b"cas" else self.routes.gutters.take_over(cluster, e)
            if gutter is None:
                raise
            reply = self.items.write(verb, gutter, gutter.adopt(k, cluster), payload,
                                flags, self.routes.gutters.ttl(cluster, ttl), deadline)
            return _store_result(reply, k)
        if reply == b"STORED":
            replicas.mirror(cluster, mirror)
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
            if codec.is_compressed(flags) or flags & codec.INTERNAL_FLAGS:
                raise errors.conflict(
                    f"{verb.decode()} refused: item {key!r} is compressed, large or "
                    "enveloped", key=key, flags=flags,
                )
        elif head != b"EN":
            raise errors.bad_gateway(f"unexpected mg reply {head[:80]!r}", key=key)
        self.hot[cluster.name].drop((k.wire,))
        reply = cluster.store(verb, k, as_bytes(value), 0, 0, deadline)
        if reply == b"STORED":
            self._invalidate_replicas(cluster, [k], deadline)
        return _store_result(reply, k)

    def append(self, key: str, value: bytes, target: Target | None) -> int:
        return self._concat(b"append", key, value, target)

    def prepend(self, key: str, value: bytes, target: Target | None) -> int:
        return self._concat(b"prepend", key, value, target)

    def put_multi(self, entries: Sequence[Entry], opts: WriteOptions | None) -> dict[str, int]:
        self._begin()
        cluster, server_key, ns = self._target(opts.target if opts else None)
        ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
        large = self.large[cluster.name]
        items: list[tuple[Key, bytes, int]] = []
        big: list[tuple[Key, bytes, int]] = []
        for e in entries or []:
            k = cluster.resolve(e.key, server_key, ns)
            large.check_size(len(as_bytes(e.value)), e.key)
            payload, flags = self.items.encode(cluster, e.value, opts, e.type, e.user_flags)
            (big if large.needs_split(payload) else items).append((k, payload, flags))
        if not items and not big:
            return {}
        deadline = self._deadline()
        self.hot[cluster.name].drop(k.wire for k, _, _ in items + big)
        out: dict[str, int] = {}
        for k, payload, flags in big:
            out[k.name] = _store_result(large.write(cluster, k, b"set", payload, flags, ttl,
                                                    deadline), k)
        replies = cluster.store_many(items, ttl, b"set", deadline) if items else {}

        def mirror(c: Cluster) -> None:
            for k, payload, flags in big:
                self.items.write(b"set", c, c.adopt(k, cluster), payload, flags, ttl, deadline)
            if items:
                c.store_many([(c.adopt(k, cluster), p, f) for k, p, f in items], ttl, b"set",
                             deadline)

        self.routes.replicas.mirror(cluster, mirror)
        for k, _, _ in items:
            reply = replies[k.wire]
            if isinstance(reply, ServiceError):
                raise reply
            out[k.name] = _store_result(reply, k)
        return out

    def touch(self, key: str, ttl: int, target: Target | None) -> bool:
        self._begin()
        cluster, k = self._resolve(key, target)
        deadline = self._deadline()
        return self._everywhere(cluster, lambda c, ck: c.touch(ck, ttl or 0, deadline), k)

    def remove(self, key: str, target: Target | None) -> bool:
        self._begin()
        cluster, k = self._resolve(key, target)
        self.hot[cluster.name].drop((k.wire,))
        deadline = self._deadline()
        try:
            return self._everywhere(cluster, lambda c, ck: c.delete(ck, deadline), k)
        except ServiceError as e:
            gutter = self.routes.gutters.take_over(cluster, e)
            if gutter is None:
                raise
            return gutter.delete(gutter.adopt(k, cluster), deadline)

    def invalidate(self, key: str, target: Target | None) -> bool:
        """Marks the item stale (memcached ``md <key> I``) for get_or_compute's
        stale-while-revalidate; the mark lasts as long as a load's lease."""
        self._begin()
        cluster, k = self._resolve(key, target)
        self.hot[cluster.name].drop((k.wire,))
        deadline = self._deadline()
        flags = b"I T%d" % self.readthrough.lease_s

        def mark(c: Cluster, ck: Key) -> bool:
            return c.meta(ck, b"md", flags, deadline, idempotent=True).status == b"HD"

        return self._everywhere(cluster, mark, k)

    def _everywhere(self, cluster: Cluster, op: Callable[[Cluster, Key], bool],
                    k: Key) -> bool:
        """`op` (remove, touch) on the primary, then its replicas; the primary's answer, or a
        replica's when the primary failed with 503/504 (`services.cache.routes`)."""
        replicas = self.routes.replicas
        try:
            result = op(cluster, k)
        except ServiceError as e:
            if not replicas.of(cluster):
                raise
            return replicas.first_success(
                replicas.mirror(cluster, lambda c: op(c, c.adopt(k, cluster))), e)
        replicas.mirror(cluster, lambda c: op(c, c.adopt(k, cluster)))
        return result

    def _invalidate_replicas(self, cluster: Cluster, keys: list[Key], deadline: float) -> None:
        """After a write the replicas cannot repeat: they drop their copies."""
        self.routes.replicas.mirror(
            cluster, lambda c: c.delete_many([c.adopt(k, cluster) for k in keys], deadline))

    def remove_multi(self, keys: Sequence[str], target: Target | None) -> dict[str, bool]:
        self._begin()
        cluster, server_key, ns = self._target(target)
        resolved = cluster.resolve_many(list(dict.fromkeys(keys or [])), server_key, ns)
        if not resolved:
            return {}
        self.hot[cluster.name].drop(k.wire for k in resolved)
        deadline = self._deadline()
        replies = cluster.delete_many(resolved, deadline)
        self._invalidate_replicas(cluster, resolved, deadline)
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
        self.hot[cluster.name].drop((k.wire,))
        deadline = self._deadline()
        value = cluster.arithmetic(k, delta, decrement, initial, ttl, deadline)
        self._invalidate_replicas(cluster, [k], deadline)
        if value is None:
            return Counter(found=False, value=0)
        return Counter(found=True, value=value - _I64 if value >= 2**63 else value)

    def increment(self, key: str, delta: int, opts: CounterOptions | None) -> Counter:
        return self._counter(key, delta, opts, decrement=False)

    def decrement(self, key: str, delta: int, opts: CounterOptions | None) -> Counter:
        return self._counter(key, delta, opts, decrement=True)

    # -- oneway ----------------------------------------------------------------------------

    def put_async(self, key: str, value: bytes, opts: WriteOptions | None) -> None:
        """A value too big for one item is written at once (after this connection's
        buffered writes, to keep their order), not buffered."""
        try:
            cluster, k = self._resolve(key, opts.target if opts else None)
            self.large[cluster.name].check_size(len(as_bytes(value)), key)
            payload, flags = self.items.encode(cluster, value, opts)
            ttl = opts.ttl if opts is not None and opts.ttl is not None else 0
            if ttl < 0:
                raise errors.bad_request("ttl is negative", argument="ttl")
            if self.large[cluster.name].needs_split(payload):
                self._begin()
                deadline = time.monotonic() + self.config.async_timeout_ms / 1000
                reply = self.items.write(b"set", cluster, k, payload, flags, ttl, deadline)
                _store_result(reply, k)
                self.routes.replicas.mirror(cluster, lambda c: self.items.write(
                    b"set", c, c.adopt(k, cluster), payload, flags, ttl, deadline))
                self.oneway_stats.sent += 1
                return
        except ServiceError as e:
            self.oneway.rejected(key, e)
            return
        self.hot[cluster.name].drop((k.wire,))
        self._enqueue_all(cluster, k, lambda wire: storage_command(b"set", wire, flags, ttl,
                                                                   payload), {b"STORED"})

    def remove_async(self, key: str, target: Target | None) -> None:
        try:
            cluster, k = self._resolve(key, target)
        except ServiceError as e:
            self.oneway.rejected(key, e)
            return
        self.hot[cluster.name].drop((k.wire,))
        self._enqueue_all(cluster, k, lambda wire: b"delete " + wire + b"\r\n",
                          {b"DELETED", b"NOT_FOUND"})

    def _enqueue_all(self, cluster: Cluster, k: Key, command: Callable[[bytes], bytes],
                     ok: set[bytes]) -> None:
        """Buffers one oneway command for the key's server and its replicas' servers."""
        targets = [k]
        for replica in self.routes.replicas.of(cluster):
            try:
                targets.append(replica.adopt(k, cluster))
            except ServiceError as e:
                self.oneway.rejected(k.name, e)
        for t in targets:
            self.oneway.enqueue(
                oneway.PendingWrite(t.server, k.name, command(t.wire), frozenset(ok)))

    # -- beyond pecl ----------------------------------------------------------------------

    def get_or_compute(self, key: str, loader: Loader, opts: ReadOptions | None) -> Item:
        """Read-through with stampede protection (`services.cache.readthrough`). A value
        computed by this call is answered with cas 0."""
        self._begin()
        cluster, k = self._resolve(key, opts.target if opts else None)
        stored = self.readthrough.get_or_compute(cluster, k, loader, self._deadline())
        return self.items.item(key, stored, _decompress(opts))

    def invalidate_namespace(self, ns: str, pool: str | None) -> None:
        """Moves the namespace to a new version: every key under it misses from now on."""
        self._begin()
        namespace.invalidate(self._pool(pool), ns, self._deadline())

    def rate_limit(self, key: str, limit: int, window_ms: int,
                   target: Target | None) -> RateLimit:
        """One attempt in a fixed window (`services.cache.ratelimit`); refusal is
        allowed=false, not an error."""
        self._begin()
        ratelimit.check(limit, window_ms)
        cluster, server_key, ns = self._target(target)
        return ratelimit.attempt(cluster, key, limit, window_ms, self._deadline(), server_key,
                                 ns)

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
        self.hot[self._pool(pool).name].clear()
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
        """Numbers for getCounters: oneway writes, read-through, large values, partial
        multi-gets and server failures."""
        out = {
            "cache.oneway.sent": self.oneway_stats.sent,
            "cache.oneway.failed": self.oneway_stats.failed,
            "cache.oneway.flushes": self.oneway_stats.flushes,
        }
        out.update(_prefixed("cache.readthrough.", asdict(self.readthrough.stats)))
        out["cache.warmup.copied"] = self.routes.warmup.warmed
        out["cache.warmup.failures"] = self.routes.warmup.failures
        for name, c in self.pools.items():
            out[f"cache.{name}.partial_misses"] = self.partial_misses[name]
            out.update(self.routes.counters(name))
            out.update(_prefixed(f"cache.{name}.large.", asdict(self.large[name].stats)))
            out.update(_prefixed(f"cache.{name}.hot.", self.hot[name].counters()))
            for s in c.servers:
                out[f"cache.{name}.{s.address}.failures"] = s.failure_count
                out[f"cache.{name}.{s.address}.down"] = int(s.down)
                out[f"cache.{name}.{s.address}.batches"] = s.batches
                out[f"cache.{name}.{s.address}.batched_keys"] = s.batched_keys
        return out

    def close(self) -> None:
        self.readthrough.close()
        for cluster in self.pools.values():
            cluster.close()


def _prefixed(prefix: str, numbers: dict[str, int]) -> dict[str, int]:
    return {prefix + name: value for name, value in numbers.items()}


def _decompress(opts: ReadOptions | None) -> bool:
    return opts is None or opts.decompress is None or bool(opts.decompress)


def _store_result(reply: bytes, key: Key) -> int:
    try:
        return _STORE_RESULTS[reply]
    except KeyError:
        raise errors.bad_gateway(
            f"unexpected store reply {reply[:80]!r} from {key.server.address}", key=key.name
        ) from None
