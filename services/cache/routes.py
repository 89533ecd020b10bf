"""Routes between a handler's pools: where a read goes when the key's server failed or the
key is missing, and the counters of those routes.

Order after a server failure (503/504 for replicas, 503 for the gutter): the pool's replicas
in their configured order, then its gutter pool; the original error when none answers. A miss
on a healthy server goes to the pool's warm-up source. Writes are routed by the handler
itself, with `Replicas.mirror` and `Gutters.take_over`.

Replicated pools
----------------

A pool with ``replicas = ["<pool>", ...]`` is the primary of a replica set (mcrouter's
all-sync write and failover read routes, the useful part of them):

- Reads (get, get_multi) ask the primary; a key whose primary server fails with 503 or 504
  is read from the replicas in the configured order. A miss on the primary is a miss: it is
  not asked again elsewhere.
- ``put`` (set), ``remove`` and ``touch`` go to the primary and then to every replica in
  parallel. Conditional and relative writes (add, replace, cas, append, prepend, counters)
  are decided by the primary alone, because each copy has its own cas tokens and its own
  history; after the primary stored, the replicas get the result: a ``set`` of the value for
  add/replace/cas, a delete for append/prepend/counters (a replica then misses rather than
  serve an outdated value). put_multi, remove_multi and oneway writes are mirrored the same
  way.
- A replica that fails a write is logged and counted (``cache.<pool>.replica_write_failures``)
  but does not fail the call: it is behind until the key is written again or expires. If the
  primary fails a set, remove or touch with 503/504 the call succeeds when a replica took
  it (the primary is behind then). Every other primary failure is the call's error.

Replicas are whole pools (their own servers, ring and prefix), so a replica set survives
losing any one server, and a kill -9 of one replica's server costs no hit.

Gutter pools
------------

A failed server's keys are served by a small standby pool for a while. As in Facebook's
memcache (NSDI 2013) and mcrouter's failover routes: a pool with ``gutter = "<pool>"`` keeps
its ring unchanged when a server fails (so no other server suddenly takes its keys and its
load), and every single-key read, store and delete of a key whose server answers 503 (marked
down, refused, unreachable: nothing reached it) goes to the gutter pool instead. Writes into
the gutter get a TTL of at most ``gutter_ttl_s``, so what it holds is short-lived: when the
server comes back, its keys are read from it again and the gutter copies age out. get_multi
reads the keys of failed servers from the gutter. Other calls (counters, append/prepend, touch,
cas, put_multi, remove_multi) still fail with the 503: their outcome in a short-lived copy
would be misleading.

A large value is stored whole in the gutter when its write fails; a large value whose manifest
server is up but one of whose chunk servers is down remains a miss.

Use it with ``eject = false`` (an ejecting pool remaps the keys itself) and a gutter pool on
other machines.

Warm-up
-------

A new (cold) pool fills itself from the pool it replaces. A pool with
``warm_from = "<old pool>"`` answers a miss by reading the key from the old pool (meta
``mg <key> v f c t``, which also gives the remaining TTL) and, on a hit, copying it into
the new pool with ``add`` and that remaining TTL, so a write that reached the new pool
meanwhile is never overwritten and the copy expires when the original would have. Large
values are read through their manifest and served, but not copied (their chunks would have to
be copied too; the next write stores them in the new pool). Items held under a lease
placeholder in the old pool are misses.

The old pool is a fallback, never a source of errors: a failure there is logged, counted and
answered as the miss it was in the new pool. Namespaced reads (`Target.ns`) are not warmed,
because each pool keeps its own namespace versions. Writes go to the new pool only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import gevent
import gevent.pool

from services.cache import codec
from services.cache.client import MAX_RELATIVE_TTL_S, Cluster, Key
from services.cache.readthrough import Storage, Stored
from services.cache.server import Server, ValueTuple
from services.core.errors import ErrorCode, ServiceError

if TYPE_CHECKING:  # config imports this module's defaults
    from services.cache.config import CacheConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Primary failures after which the replicas are asked (the request may not have been done).
FAILOVER_CODES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT})


class Replicas:
    """The replica pools of each primary pool, and their counters."""

    def __init__(self, pools: dict[str, Cluster], replicas_of: dict[str, list[str]]) -> None:
        self.members = {name: [pools[r] for r in names]
                        for name, names in replicas_of.items() if names}
        self.read_failovers = dict.fromkeys(pools, 0)
        self.write_failures = dict.fromkeys(pools, 0)

    def of(self, cluster: Cluster) -> list[Cluster]:
        return self.members.get(cluster.name, [])

    def failover(self, cluster: Cluster, error: ServiceError) -> Iterator[Cluster]:
        """The replicas to read after the primary failed with `error` (none for a refusal)."""
        if error.code in FAILOVER_CODES:
            for replica in self.of(cluster):
                self.read_failovers[cluster.name] += 1
                yield replica

    def mirror(self, cluster: Cluster,
               write: Callable[[Cluster], T]) -> list[T | ServiceError]:
        """Runs `write(replica)` on every replica of `cluster` in parallel (it adopts its keys
        with `Cluster.adopt`); the results in replica order, failures (counted and logged)
        as their ServiceError."""
        replicas = self.of(cluster)
        if not replicas:
            return []

        def run(replica: Cluster) -> T | ServiceError:
            try:
                return write(replica)
            except ServiceError as e:
                self.write_failures[cluster.name] += 1
                log.warning("replica pool %s of %s missed a write: %s", replica.name,
                            cluster.name, e.message)
                return e

        if len(replicas) == 1:
            return [run(replicas[0])]
        jobs = [gevent.spawn(run, r) for r in replicas]
        try:
            gevent.joinall(jobs)
        finally:
            gevent.killall([j for j in jobs if not j.dead])
        return [j.value if j.successful() else ServiceError(
            code=ErrorCode.INTERNAL, message=repr(j.exception)) for j in jobs]

    @staticmethod
    def first_success(results: list[T | ServiceError], error: ServiceError) -> T:
        """The first replica result that is not an error (the primary failed with `error`),
        or `error` raised when the primary's failure is not one to fail over or none took
        the write."""
        if error.code in FAILOVER_CODES:
            for r in results:
                if not isinstance(r, ServiceError):
                    return r
        raise error

#: Longest life of an item written to a gutter pool, seconds.
DEFAULT_GUTTER_TTL_S = 10


class Gutters:
    """Which pool backs which, and how often it was used."""

    def __init__(self, pools: dict[str, Cluster], gutter_of: dict[str, str],
                 ttl_s: dict[str, int]) -> None:
        self.pools = pools
        self.gutter_of = {name: g for name, g in gutter_of.items() if g}
        self.ttl_s = ttl_s
        self.used = dict.fromkeys(pools, 0)

    def take_over(self, cluster: Cluster, error: ServiceError) -> Cluster | None:
        """The gutter pool to use after `error` on `cluster`, or None (raise the error)."""
        name = self.gutter_of.get(cluster.name)
        if name is None or error.code != ErrorCode.UNAVAILABLE:
            return None
        self.used[cluster.name] += 1
        log.info("pool %s: %s; using gutter pool %s", cluster.name, error.message, name)
        return self.pools[name]

    def ttl(self, cluster: Cluster, ttl: int) -> int:
        """The TTL of a write moved to the gutter: never longer than the pool's gutter TTL."""
        cap = self.ttl_s[cluster.name]
        if ttl <= 0 or ttl > MAX_RELATIVE_TTL_S:  # never, or a Unix time
            return cap
        return min(ttl, cap)

#: Misses of one get_multi warmed at once.
WARM_PARALLEL = 16


class WarmUp:
    """Counts and the read-then-fill step for the pools of one handler."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.warmed = 0
        self.failures = 0

    def one(self, new: Cluster, old: Cluster, key: Key, server_key: str | None,
            deadline: float) -> Stored | None:
        """The value of `key` from `old` (copied into `new` when it is an ordinary item),
        or None."""
        try:
            old_key = old.resolve(key.name, server_key)
            reply = old.meta(old_key, b"mg", b"v f c t", deadline, idempotent=True)
            if reply.status != b"VA" or reply.value is None or b"Z" in reply.flags:
                return None
            flags, cas = reply.number(b"f"), reply.number(b"c")
            if flags & codec.FLAG_LARGE:
                return self.storage.load_stored(old, old_key, flags, reply.value, cas, deadline)
            remaining = reply.number(b"t")
            ttl = 0 if remaining < 0 else max(1, remaining)
        except ServiceError as e:
            self.failures += 1
            log.warning("warm-up read of %r from pool %s failed: %s", key.name, old.name,
                        e.message)
            return None
        try:
            new.store(b"add", key, reply.value, flags, ttl, deadline)
            self.warmed += 1
        except ServiceError as e:
            self.failures += 1
            log.warning("warm-up copy of %r into pool %s failed: %s", key.name, new.name,
                        e.message)
        return self.storage.load_stored(new, key, flags, reply.value, cas, deadline)

    def many(self, new: Cluster, old: Cluster, keys: Sequence[Key], server_key: str | None,
             deadline: float) -> dict[bytes, Stored]:
        """`one` for many misses, `WARM_PARALLEL` at a time: wire key -> value for the hits."""
        pool = gevent.pool.Pool(WARM_PARALLEL)
        found = pool.map(lambda k: self.one(new, old, k, server_key, deadline), keys)
        return {k.wire: v for k, v in zip(keys, found, strict=True) if v is not None}


class Routes:
    """The replica sets, gutters and warm-up sources of one handler's pools."""

    def __init__(self, pools: dict[str, Cluster], config: CacheConfig,
                 storage: Storage) -> None:
        p = config.pools
        self.replicas = Replicas(pools, {name: list(c.replicas) for name, c in p.items()})
        self.gutters = Gutters(pools, {name: c.gutter for name, c in p.items()},
                               {name: c.gutter_ttl_s for name, c in p.items()})
        self.warmup = WarmUp(storage)

    def read_elsewhere(self, cluster: Cluster, key: Key, error: ServiceError,
                       deadline: float) -> tuple[Cluster, Key, ValueTuple | None]:
        """After `key`'s server failed with `error`: (pool, key, hit or None) from the first
        replica or gutter that answers; `error` raised when none does."""
        for replica in self.replicas.failover(cluster, error):
            moved = replica.adopt(key, cluster)
            try:
                return replica, moved, replica.get(moved, deadline)
            except ServiceError:
                continue
        gutter = self.gutters.take_over(cluster, error)
        if gutter is None:
            raise error
        moved = gutter.adopt(key, cluster)
        return gutter, moved, gutter.get(moved, deadline)

    def fetch_elsewhere(self, cluster: Cluster, keys: Sequence[Key],
                        failed: dict[Server, ServiceError], found: dict[bytes, ValueTuple],
                        deadline: float) -> list[Key]:
        """get_multi's keys on `failed` servers from replicas, then the gutter: hits are
        added to `found` (under the primary's wire keys); the keys no route answered."""
        waiting = [k for k in keys if k.server in failed]
        error = next(iter(failed.values()))
        for other in self.replicas.failover(cluster, error):
            waiting = self._fetch(other, cluster, waiting, found, deadline)
            if not waiting:
                return []
        gutter = self.gutters.take_over(cluster, error)
        if gutter is not None:
            waiting = self._fetch(gutter, cluster, waiting, found, deadline)
        return waiting

    @staticmethod
    def _fetch(other: Cluster, cluster: Cluster, keys: list[Key],
               found: dict[bytes, ValueTuple], deadline: float) -> list[Key]:
        moved = [other.adopt(k, cluster) for k in keys]
        hits, bad = other.fetch_many(moved, deadline)
        waiting = []
        for k, m in zip(keys, moved, strict=True):
            if m.wire in hits:
                found[k.wire] = hits[m.wire]
            elif m.server in bad:
                waiting.append(k)
        return waiting

    def counters(self, name: str) -> dict[str, int]:
        return {
            f"cache.{name}.gutter_used": self.gutters.used[name],
            f"cache.{name}.replica_read_failovers": self.replicas.read_failovers[name],
            f"cache.{name}.replica_write_failures": self.replicas.write_failures[name],
        }
