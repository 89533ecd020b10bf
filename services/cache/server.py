"""One memcached server of a pool: its bounded connection pool, health and get batching.

Connections: at most `pool_size` per server, opened lazily. A caller waits for a free one
until its deadline (then 503, retryable: nothing was sent). A connection is returned to the
pool only after a command completed normally; one interrupted by anything — an I/O error, a
`gevent.Timeout`, a greenlet kill, any `BaseException` — is closed in a `finally`.

Health, like libmemcached's ``SERVER_FAILURE_LIMIT``/``RETRY_TIMEOUT``/``REMOVE_FAILED_SERVERS``:
every connect failure, lost connection, read timeout or out-of-sync reply counts one failure
(a success resets the count). At `failure_limit` consecutive failures the server is *down*:
its idle connections are closed, calls to it fail fast with 503 (retryable) without touching
the network, its listeners are told (a pool that ejects rebuilds its ring without it), and a
probe greenlet tries ``version`` every `retry_timeout`. Only a probe that gets an answer brings
the server back; a timer alone never does.

Coalescing: a single-key read of an idle server is sent by the caller itself; reads that
arrive while one is in flight are queued and sent by up to `batchers` batcher greenlets as
one ``gets k1 k2 ...`` per round trip (at most `batch_max_keys` keys), so 64 callers cost a
few round trips instead of 64. A queued caller that gives up (deadline) just stops waiting;
the batcher, not the caller, owns that connection, so an abandoned wait never leaves a reply
unread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import gevent
from gevent.hub import Waiter, get_hub
from gevent.lock import BoundedSemaphore

from services.cache.protocol import (
    Connection,
    MemcacheIOError,
    ProtocolError,
    ReadTimeout,
    ServerReplyError,
)
from services.cache.ring import Node
from services.core import errors
from services.core.context import current_call
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")

ValueTuple = tuple[int, bytes, int]

#: Connections per server.
DEFAULT_POOL_SIZE = 16
#: TCP connect timeout, seconds (libmemcached's default is 4 s; loopback/LAN needs far less).
DEFAULT_CONNECT_TIMEOUT_S = 1.0
#: Longest wait for one reply, seconds, whatever the call's deadline.
DEFAULT_IO_TIMEOUT_S = 2.0
#: Consecutive failures that mark a server down.
DEFAULT_FAILURE_LIMIT = 2
#: Seconds between probes of a down server (libmemcached's RETRY_TIMEOUT default is 2 s).
DEFAULT_RETRY_TIMEOUT_S = 2.0
#: Most keys one coalesced read sends.
DEFAULT_BATCH_MAX_KEYS = 128
#: Batcher greenlets (each holds one connection while it works) per server.
DEFAULT_BATCHERS = 4


@dataclass(frozen=True)
class ServerSettings:
    pool_size: int = DEFAULT_POOL_SIZE
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    io_timeout_s: float = DEFAULT_IO_TIMEOUT_S
    failure_limit: int = DEFAULT_FAILURE_LIMIT
    retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S
    batch_max_keys: int = DEFAULT_BATCH_MAX_KEYS
    batchers: int = DEFAULT_BATCHERS


class Server:
    """A memcached server: `call(fn, deadline)` runs `fn(connection, deadline)` on a pooled
    connection and turns failures into ServiceError (see `services.cache.client`)."""

    def __init__(
        self,
        node: Node,
        settings: ServerSettings,
        on_health_change: Callable[[Server], None] | None = None,
    ) -> None:
        self.node = node
        self.address = node.address
        self.settings = settings
        self._on_health_change = on_health_change
        self._slots = BoundedSemaphore(settings.pool_size)
        self._idle: list[Connection] = []
        self.failures = 0
        self.down = False
        self.down_since = 0.0
        self._prober: gevent.Greenlet | None = None
        self._queue: deque[tuple[bytes, Waiter]] = deque()
        self._batchers = 0
        self._batcher_starting = False
        self._direct = False
        self._closed = False
        #: Counters for `stats`/metrics: failures counted, times marked down.
        self.failure_count = 0
        self.down_count = 0
        #: Coalesced reads: round trips sent by batchers and keys they carried.
        self.batches = 0
        self.batched_keys = 0

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def connection(self, deadline: float) -> Iterator[Connection]:
        """A connection for one command; returned to the pool only if the block completes.

        503 (retryable) when the server is down, no slot frees up before the deadline, or the
        connection cannot be opened."""
        if self.down:
            raise self._down_error()
        wait = deadline - time.monotonic()
        if wait <= 0 or not self._slots.acquire(timeout=wait):
            raise errors.unavailable(
                f"no free connection to memcached {self.address} before the deadline",
                server=self.address,
                pool_size=self.settings.pool_size,
            )
        conn: Connection | None = None
        done = False
        try:
            conn = self._idle.pop() if self._idle else self._open(deadline)
            yield conn
            done = True
        except ServerReplyError as e:
            done = e.reusable
            raise
        finally:
            if conn is not None:
                if done and not self._closed and not self.down:
                    self._idle.append(conn)
                else:
                    conn.close()
            self._slots.release()

    def _open(self, deadline: float) -> Connection:
        timeout = min(self.settings.connect_timeout_s, max(deadline - time.monotonic(), 0.001))
        return Connection.open(self.node.host, self.node.port, timeout)

    def call(self, fn: Callable[[Connection, float], T], deadline: float, idempotent: bool) -> T:
        """Runs `fn` on a connection with the I/O deadline min(deadline, now + io_timeout);
        counts failures and maps them to ServiceError (`idempotent` says whether a lost
        connection after the request was sent may be retried by the caller)."""
        io_deadline = min(deadline, time.monotonic() + self.settings.io_timeout_s)
        try:
            with self.connection(io_deadline) as conn:
                result = fn(conn, io_deadline)
        except MemcacheIOError as e:
            # The idle connections were opened in the same era as the one that just failed
            # (a restarted memcached leaves them all dead): drop them rather than fail on
            # each in turn.
            self._drop_idle()
            self.record_failure(e)
            raise self._io_error(e, idempotent) from None
        except ServerReplyError as e:
            raise self.reply_error(e) from None
        if self.failures:
            self.failures = 0
        return result

    def _io_error(self, e: MemcacheIOError, idempotent: bool) -> ServiceError:
        if isinstance(e, ReadTimeout):
            return errors.timeout(
                f"memcached {self.address} did not answer in time",
                retryable=idempotent,
                server=self.address,
            )
        if isinstance(e, ProtocolError):
            return errors.bad_gateway(
                f"unexpected reply from memcached {self.address}: {e}", server=self.address
            )
        retryable = idempotent or not e.sent
        return errors.service_error(
            errors.ErrorCode.UNAVAILABLE,
            f"memcached {self.address} unreachable: {e}",
            retryable=retryable,
            details={"server": self.address},
        )

    def reply_error(self, e: ServerReplyError) -> ServiceError:
        text = str(e)
        if "too large" in text:
            return errors.too_large(
                f"memcached {self.address}: {text}", server=self.address, reply=text
            )
        if "out of memory" in text:
            return errors.insufficient_storage(
                f"memcached {self.address}: {text}", server=self.address, reply=text
            )
        if text.startswith("CLIENT_ERROR") and "non-numeric" in text:
            return errors.bad_request(
                f"the item is not a number: {text}", server=self.address, reply=text
            )
        return errors.bad_gateway(
            f"memcached {self.address} refused the command: {text}",
            server=self.address,
            reply=text,
        )

    def _down_error(self) -> ServiceError:
        return errors.unavailable(
            f"memcached {self.address} is marked down; retried every "
            f"{self.settings.retry_timeout_s:g}s",
            retry_after_ms=int(self.settings.retry_timeout_s * 1000),
            server=self.address,
        )

    # -- health ----------------------------------------------------------------------------

    def record_failure(self, e: BaseException) -> None:
        self.failures += 1
        self.failure_count += 1
        log.warning("memcached %s failure %d: %s", self.address, self.failures, e)
        if self.failures >= self.settings.failure_limit and not self.down:
            self.mark_down()

    def mark_down(self) -> None:
        self.down = True
        self.down_since = time.monotonic()
        self.down_count += 1
        self._drop_idle()
        log.error("memcached %s marked down after %d failures", self.address, self.failures)
        if self._prober is None and not self._closed:
            self._prober = gevent.spawn(self._probe_loop)
        self._notify()

    def _probe_loop(self) -> None:
        try:
            while not self._closed:
                gevent.sleep(self.settings.retry_timeout_s)
                if self._closed:
                    return
                if self.probe():
                    self.failures = 0
                    self.down = False
                    log.warning("memcached %s is back (probe answered)", self.address)
                    self._notify()
                    return
        finally:
            self._prober = None

    def probe(self) -> bool:
        """Whether the server answers ``version`` now, on a fresh connection."""
        deadline = time.monotonic() + self.settings.connect_timeout_s + self.settings.io_timeout_s
        conn: Connection | None = None
        try:
            conn = Connection.open(self.node.host, self.node.port, self.settings.connect_timeout_s)
            conn.version(deadline)
            return True
        except (MemcacheIOError, ServerReplyError) as e:
            log.info("probe of memcached %s failed: %s", self.address, e)
            return False
        finally:
            if conn is not None:
                conn.close()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _notify(self) -> None:
        if self._on_health_change is not None:
            self._on_health_change(self)

    # -- coalesced reads -------------------------------------------------------------------

    def get(self, key: bytes, deadline: float) -> ValueTuple | None:
        """(flags, value, cas) of one key or None on a miss, sent in a shared ``gets`` with
        other concurrent reads of this server. 504 when the deadline passes first."""
        if self.down:
            raise self._down_error()
        if not self._direct and not self._batchers:
            # Nothing in flight: send it from this greenlet, saving the hand-offs to a
            # batcher. Reads arriving meanwhile queue up and go out together afterwards.
            self._direct = True
            try:
                found = self.call(
                    lambda c, dl: c.retrieve(b"gets", [key], dl), deadline, idempotent=True
                )
            finally:
                self._direct = False
            return found.get(key)
        waiter: Waiter = Waiter()
        self._queue.append((key, waiter))
        # One more batcher only when none is waiting to start (it will take this read too)
        # and every running one is busy with a round trip.
        if not self._batcher_starting and self._batchers < self.settings.batchers:
            self._batchers += 1
            self._batcher_starting = True
            gevent.spawn(self._batch_loop)
        # The batcher hands the answer over with `Waiter.switch` (or `throw`); a caller that
        # gave up has left the waiter, and a late answer is then only stored in it.
        ctx = current_call()
        if ctx is not None and deadline >= ctx.deadline:
            # The server's deadline timer already bounds this greenlet and will interrupt
            # the wait; a second timer per read costs more than the rest of the hand-off.
            result: ValueTuple | None = waiter.get()
            return result
        timer = gevent.Timeout(max(0.0, deadline - time.monotonic()))
        timer.start()
        try:
            result = waiter.get()
            return result
        except gevent.Timeout as t:
            if t is not timer:
                raise
            raise errors.timeout(
                f"memcached {self.address} did not answer in time", retryable=True,
                server=self.address,
            ) from None
        finally:
            timer.close()

    def _batch_loop(self) -> None:
        self._batcher_starting = False
        hand_over = get_hub().loop.run_callback  # Waiter.switch/throw run in the hub
        try:
            while self._queue:
                batch: list[tuple[bytes, Waiter]] = []
                while self._queue and len(batch) < self.settings.batch_max_keys:
                    batch.append(self._queue.popleft())
                keys = list(dict.fromkeys(key for key, _ in batch))
                self.batches += 1
                self.batched_keys += len(batch)
                deadline = time.monotonic() + self.settings.io_timeout_s
                try:
                    found = self.call(partial(_gets, keys=keys), deadline, idempotent=True)
                except ServiceError as e:
                    for _, waiter in batch:
                        hand_over(waiter.throw, e)
                    continue
                except BaseException as e:
                    # Killed (shutdown): the waiters must not wait for their deadline.
                    lost = errors.unavailable(f"read of {self.address} interrupted: {e!r}")
                    for _, waiter in batch:
                        hand_over(waiter.throw, lost)
                    raise
                for key, waiter in batch:
                    hand_over(waiter.switch, found.get(key))
        finally:
            self._batchers -= 1

    def close(self) -> None:
        """Closes idle connections and stops probing; in-use connections close on release."""
        self._closed = True
        self._drop_idle()
        if self._prober is not None:
            self._prober.kill(block=False)


def _gets(conn: Connection, deadline: float, keys: list[bytes]) -> dict[bytes, ValueTuple]:
    return conn.retrieve(b"gets", keys, deadline)
