"""Read-through with stampede protection: `get_or_compute` over memcached leases and Gearman.

On a miss exactly one caller in the cluster runs the loader; everyone else gets its value.

1. Within one service instance, callers of the same (pool, key) share one *flight*: the
   first becomes its leader, the others wait for the leader's outcome without touching
   memcached.
2. Across instances, the leader asks memcached for a lease: ``mg <key> v c f t N<lease>``. On
   a miss memcached creates an empty placeholder (TTL `lease`) and answers ``W`` (win) to
   exactly one reader; the others see ``Z`` with the placeholder's cas. The placeholder is a
   real, empty item: until the value replaces it, a plain ``get`` (and PHP) reads the key
   as an empty string, so keys served by get_or_compute should be read with it.
3. The winner submits the loader through Gearman as a foreground job whose unique id is the
   key, so even two winners (a lease that expired under a very slow loader) coalesce on
   gearmand into one run. The value is stored with a `codec` envelope (how long it took to
   compute, when it expires) and returned. The load runs in a background greenlet bounded by
   `load_timeout_ms`, so a winner whose own deadline passes (504) still stores the value for
   everyone else.
4. A ``Z`` leader polls (``mg`` without ``N``) with a doubling back-off, from `POLL_MIN_S` up
   to `poll_max_s`, until the value appears or its deadline passes (504, retryable). If
   memcached still holds a stale copy (``X``, after ``md <key> I``), the stale value is
   answered at once instead.
5. A failed load (the job FAILED, raised, timed out, or could not be submitted) is
   ServiceError 502 (504 for a job timeout) naming the job's outcome. The winner leaves a
   failure mark ``lf:<hash>:<lease cas>`` for `FAILURE_MARK_TTL_S` seconds and then deletes
   its placeholder (only if it is still the placeholder: ``md C<cas>``), so the waiters of
   that lease on every instance raise the same error, and the next call takes a new lease
   and runs the loader again.

XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): on a hit whose envelope has an
expiry, the caller refreshes early when ``now - delta * beta * ln(rand()) >= expiry``
(`should_refresh`). It answers the current value and starts a background refresh, which
first claims ``xf:<hash>`` with ``add`` so that one instance in the cluster recomputes;
cold keys (read far from expiry) practically never refresh, hot keys refresh shortly before
they expire. `rng` and `clock` are injectable so that tests are deterministic.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import gevent
import gevent.event
import gevent.pool

from glammp.cache.ttypes import Loader
from glammp.jobs.ttypes import JobStatus
from services.cache.client import MAX_RELATIVE_TTL_S, Cluster, Key
from services.cache.protocol import MetaReply
from services.core import errors
from services.core.errors import ServiceError
from services.jobs.client import GearmanClient, copy_error

log = logging.getLogger(__name__)

#: How long a lease placeholder lives when its winner vanishes, ms.
DEFAULT_LEASE_TTL_MS = 30_000
#: First and longest pause between polls of a lease someone else holds, seconds.
POLL_MIN_S = 0.005
DEFAULT_POLL_MAX_MS = 100
#: How long waiters of a failed load can still learn why it failed, seconds.
FAILURE_MARK_TTL_S = 5
#: Deadline of one load (the Gearman job and storing its value), ms.
DEFAULT_LOAD_TIMEOUT_MS = 30_000
#: XFetch's beta: > 1 refreshes earlier.
DEFAULT_BETA = 1.0
#: Longest failure message kept in a failure mark, bytes.
MAX_MARK_BYTES = 1024
_PRIORITY_NORMAL = 0


class Stored(NamedTuple):
    """An item as stored, after joining large values and opening the envelope: flags
    (internal bits removed), payload (still compressed if it was), cas, and the envelope's
    delta and expiry in ms (0 when the item has no envelope)."""

    flags: int
    payload: bytes
    cas: int
    delta_ms: int = 0
    expiry_ms: int = 0


class Storage(Protocol):
    """What the handler provides: reading a stored item and writing a value."""

    def load_stored(self, cluster: Cluster, key: Key, flags: int, payload: bytes, cas: int,
                    deadline: float) -> Stored | None: ...

    def store_computed(self, cluster: Cluster, key: Key, value: bytes, delta_ms: int,
                       ttl: int, deadline: float) -> Stored: ...


@dataclass
class ReadThroughStats:
    """Counts for getCounters."""

    loads: int = 0
    load_failures: int = 0
    joined: int = 0
    waits: int = 0
    stale_served: int = 0
    early_refreshes: int = 0


def should_refresh(now_ms: float, delta_ms: float, expiry_ms: float, beta: float,
                   draw: float) -> bool:
    """XFetch's test with `draw` in (0, 1]: recompute when now - delta*beta*ln(draw) >=
    expiry. Never for items without an expiry (0)."""
    if not expiry_ms:
        return False
    return now_ms - delta_ms * beta * math.log(draw) >= expiry_ms


def _hash(wire: bytes) -> str:
    return hashlib.blake2b(wire, digest_size=8).hexdigest()


class ReadThrough:
    """`get_or_compute` for one handler (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        gearman_servers: list[str],
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        poll_max_ms: int = DEFAULT_POLL_MAX_MS,
        load_timeout_ms: int = DEFAULT_LOAD_TIMEOUT_MS,
        beta: float = DEFAULT_BETA,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.jobs = GearmanClient(gearman_servers) if gearman_servers else None
        self.lease_s = max(1, -(-lease_ttl_ms // 1000))
        self.poll_max_s = max(POLL_MIN_S, poll_max_ms / 1000)
        self.load_timeout_s = load_timeout_ms / 1000
        self.beta = beta
        self.rng = rng or random.Random()
        self.clock = clock
        self.stats = ReadThroughStats()
        self._flights: dict[tuple[str, bytes], gevent.event.AsyncResult] = {}
        self._refreshing: set[tuple[str, bytes]] = set()
        self._background = gevent.pool.Group()

    def close(self) -> None:
        self._background.kill(block=False)
        if self.jobs is not None:
            self.jobs.close()

    # -- the call --------------------------------------------------------------------------

    def get_or_compute(self, cluster: Cluster, key: Key, loader: Loader,
                       deadline: float) -> Stored:
        """The item under `key`, computed by `loader` on a miss (see the module docstring).
        400 for a bad loader, 501 without Gearman servers, 502/504 when the load failed,
        504 when the deadline passed while waiting, and the memcached errors."""
        if loader is None or not loader.name:
            raise errors.bad_request("loader.name (a Gearman function) is required",
                                     argument="loader")
        if loader.ttl is not None and not 0 <= loader.ttl:
            raise errors.bad_request(f"loader.ttl {loader.ttl} is negative", argument="ttl")
        if self.jobs is None:
            raise errors.service_error(
                errors.ErrorCode.NOT_IMPLEMENTED,
                "get_or_compute needs cache.gearman_servers in the config", retryable=False)
        flight_key = (cluster.name, key.wire)
        flight = self._flights.get(flight_key)
        if flight is not None:
            self.stats.joined += 1
            # wait() rather than get(timeout=): a caller's gevent.Timeout must pass through.
            flight.wait(max(0.0, deadline - time.monotonic()))
            if not flight.ready():
                raise self._timeout(key)
            if not flight.successful():
                raise copy_error(flight.exception)
            result: Stored = flight.value
            return result
        flight = gevent.event.AsyncResult()
        self._flights[flight_key] = flight
        try:
            stored = self._lead(cluster, key, loader, deadline)
        except ServiceError as e:
            flight.set_exception(e)
            raise
        except BaseException as e:
            flight.set_exception(errors.unavailable(
                f"the load of {key.name!r} this call joined was interrupted: {e!r}"))
            raise
        finally:
            del self._flights[flight_key]
        flight.set(stored)
        return stored

    def _timeout(self, key: Key) -> ServiceError:
        return errors.timeout(f"no value for {key.name!r} before the deadline", retryable=True,
                              key=key.name)

    def _lead(self, cluster: Cluster, key: Key, loader: Loader, deadline: float) -> Stored:
        waiting: int | None = None  # the cas of the lease someone else holds
        pause = POLL_MIN_S
        while True:
            flags = b"v c f t" if waiting is not None else b"v c f t N%d" % self.lease_s
            reply = cluster.meta(key, b"mg", flags, deadline, idempotent=True)
            if reply.status == b"EN":
                if waiting is not None:
                    failure = self._failure(cluster, key, waiting, deadline)
                    if failure is not None:
                        raise failure
                    waiting = None  # the holder vanished: take a lease ourselves
                    continue
            elif reply.status != b"VA" or reply.value is None:
                raise errors.bad_gateway(f"unexpected mg reply {reply.status!r}", key=key.name)
            elif b"W" in reply.flags:
                return self._compute(cluster, key, loader, deadline, reply)
            elif b"Z" in reply.flags:
                if b"X" in reply.flags:
                    stale = self._load(cluster, key, reply, deadline)
                    if stale is not None:
                        self.stats.stale_served += 1
                        return stale
                if waiting is None:
                    self.stats.waits += 1
                waiting = reply.number(b"c")
            else:
                stored = self._load(cluster, key, reply, deadline)
                if stored is not None:
                    self._maybe_refresh(cluster, key, loader, stored)
                    return stored
                # A large value lost a chunk: it is a miss, and the broken manifest must go
                # for a lease to be granted.
                cluster.delete(key, deadline)
                waiting = None
                continue
            if time.monotonic() + pause >= deadline:
                raise self._timeout(key)
            gevent.sleep(pause)
            pause = min(pause * 2, self.poll_max_s)

    def _load(self, cluster: Cluster, key: Key, reply: MetaReply,
              deadline: float) -> Stored | None:
        assert reply.value is not None
        return self.storage.load_stored(cluster, key, reply.number(b"f"), reply.value,
                                        reply.number(b"c"), deadline)

    # -- computing -------------------------------------------------------------------------

    def _compute(self, cluster: Cluster, key: Key, loader: Loader, deadline: float,
                 lease: MetaReply) -> Stored:
        """Runs the load in a background greenlet bounded by `load_timeout_s`, not by this
        call's deadline: a caller that gives up (504) leaves the load running, and its value
        is still stored (or its failure still marked) for everyone waiting on the lease."""
        job = self._background.spawn(self._load_for_lease, cluster, key, loader,
                                     lease.number(b"c"), b"X" in lease.flags)
        job.join(max(0.0, deadline - time.monotonic()))
        if not job.ready():
            raise self._timeout(key)
        if not job.successful():
            raise errors.internal(f"the load of {key.name!r} crashed: {job.exception!r}")
        outcome: Stored | ServiceError = job.value
        if isinstance(outcome, ServiceError):
            raise copy_error(outcome)
        return outcome

    def _load_for_lease(self, cluster: Cluster, key: Key, loader: Loader, lease_cas: int,
                        stale: bool) -> Stored | ServiceError:
        deadline = time.monotonic() + self.load_timeout_s
        try:
            return self._run_loader(cluster, key, loader, deadline)
        except ServiceError as e:
            self.stats.load_failures += 1
            self._release(cluster, key, lease_cas, stale, e, deadline)
            return e

    def _run_loader(self, cluster: Cluster, key: Key, loader: Loader,
                    deadline: float) -> Stored:
        assert self.jobs is not None
        started = time.monotonic()
        self.stats.loads += 1
        workload = loader.workload if loader.workload else key.name.encode()
        result = self.jobs.submit(loader.name, workload, key.wire.decode(), _PRIORITY_NORMAL,
                                  deadline)
        if result.status != JobStatus.COMPLETE:
            outcome = JobStatus._VALUES_TO_NAMES.get(result.status, str(result.status))
            text = (result.exception_text or b"").decode("utf-8", "replace")[:200]
            message = f"loader {loader.name!r} for {key.name!r} ended {outcome}" + (
                f": {text}" if text else "")
            details = {"loader": loader.name, "outcome": outcome, "key": key.name}
            if result.status == JobStatus.TIMEOUT:
                raise errors.timeout(message, retryable=True, **details)
            raise errors.bad_gateway(message, **details)
        delta_ms = int((time.monotonic() - started) * 1000)
        ttl = loader.ttl or 0
        return self.storage.store_computed(cluster, key, result.data or b"", delta_ms, ttl,
                                           deadline)

    def _release(self, cluster: Cluster, key: Key, lease_cas: int, stale: bool,
                 error: ServiceError, deadline: float) -> None:
        """Tells the lease's waiters why it failed and frees the key for the next call.
        Best effort: if memcached fails here too, the lease simply expires."""
        try:
            mark = cluster.resolve(f"lf:{_hash(key.wire)}:{lease_cas}")
            cluster.store(b"set", mark, error.message.encode()[:MAX_MARK_BYTES],
                          error.code & 0xFFFF, FAILURE_MARK_TTL_S, deadline)
            if stale:
                # Marking it stale again re-arms the win token for the next reader.
                cluster.meta(key, b"md", b"I T%d" % self.lease_s, deadline, idempotent=True)
            else:
                cluster.meta(key, b"md", b"C%d" % lease_cas, deadline, idempotent=True)
        except ServiceError as e:
            log.warning("lease of %r not released after a failed load: %s", key.name,
                        e.message)

    def _failure(self, cluster: Cluster, key: Key, lease_cas: int,
                 deadline: float) -> ServiceError | None:
        mark = cluster.get(cluster.resolve(f"lf:{_hash(key.wire)}:{lease_cas}"), deadline)
        if mark is None:
            return None
        code, message, _ = mark
        return errors.service_error(code or errors.ErrorCode.BAD_GATEWAY,
                                    message.decode("utf-8", "replace"), retryable=False,
                                    details={"key": key.name})

    # -- XFetch ----------------------------------------------------------------------------

    def _maybe_refresh(self, cluster: Cluster, key: Key, loader: Loader,
                       stored: Stored) -> None:
        now_ms = self.clock() * 1000
        draw = 1.0 - self.rng.random()  # (0, 1]
        if not should_refresh(now_ms, stored.delta_ms, stored.expiry_ms, self.beta, draw):
            return
        flight_key = (cluster.name, key.wire)
        if flight_key in self._refreshing:
            return
        self._refreshing.add(flight_key)
        self._background.spawn(self._refresh, cluster, key, loader, flight_key)

    def _refresh(self, cluster: Cluster, key: Key, loader: Loader,
                 flight_key: tuple[str, bytes]) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        claim = cluster.resolve(f"xf:{_hash(key.wire)}")
        try:
            claim_ttl = min(MAX_RELATIVE_TTL_S, max(1, int(self.load_timeout_s) + 1))
            if cluster.store(b"add", claim, b"1", 0, claim_ttl, deadline) != b"STORED":
                return  # another instance is refreshing it
            try:
                self.stats.early_refreshes += 1
                self._run_loader(cluster, key, loader, deadline)
            finally:
                cluster.delete(claim, deadline)
        except ServiceError as e:
            self.stats.load_failures += 1
            log.warning("early refresh of %r failed: %s", key.name, e.message)
        finally:
            self._refreshing.discard(flight_key)
