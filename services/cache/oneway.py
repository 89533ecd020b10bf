"""Fire-and-forget writes (``put_async``/``remove_async``), buffered per Thrift connection.

pecl/memcached's ``OPT_BUFFER_WRITES`` queues stores until the next read; this does the same
per caller connection. A `WriteBuffer` collects complete memcached commands and sends them as
one pipelined write per server (servers in parallel), in the order they arrived, when:

- it holds `max_ops` commands or `max_bytes` bytes (sent by the call that filled it);
- `delay_s` passed since the first buffered command (a timer greenlet);
- any other call arrives on the same connection (`flush` before serving it, so a read after
  a oneway write on one connection sees that write);
- the connection closes.

The replies are still read (pipelined, not ``noreply``), so failures are known: they are
counted on the buffer's `stats` and logged, because a oneway call has no way to report them.
Flushes of one buffer never overlap (a lock), so a read waiting for the flush also waits for
a timer flush already in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import gevent
from gevent.lock import Semaphore

from services.cache.server import Server
from services.core.context import current_call
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

#: Commands that trigger an immediate flush.
DEFAULT_MAX_OPS = 64
#: Buffered bytes that trigger an immediate flush.
DEFAULT_MAX_BYTES = 512 * 1024
#: How long the first buffered command may wait, seconds.
DEFAULT_DELAY_S = 0.005
#: I/O deadline of one flush, seconds.
DEFAULT_FLUSH_TIMEOUT_S = 2.0
#: Where a connection keeps its buffer (`ConnectionState.state`).
_BUFFER_KEY = "cache.oneway"


@dataclass(frozen=True)
class PendingWrite:
    """One buffered command: its server, bytes, and the reply words that mean success."""

    server: Server
    key: str
    command: bytes
    ok: frozenset[bytes]


@dataclass
class WriteStats:
    """Counts shared by every buffer of a handler."""

    sent: int = 0
    failed: int = 0
    flushes: int = 0
    last_error: str = field(default="")


class WriteBuffer:
    """The buffered oneway writes of one connection (or one immediate send, see `send_now`)."""

    def __init__(
        self,
        stats: WriteStats,
        max_ops: int = DEFAULT_MAX_OPS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        delay_s: float = DEFAULT_DELAY_S,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
    ) -> None:
        self.stats = stats
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.delay_s = delay_s
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[PendingWrite] = []
        self._bytes = 0
        self._lock = Semaphore()
        self._timer: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, write: PendingWrite) -> None:
        self._pending.append(write)
        self._bytes += len(write.command)
        if len(self._pending) >= self.max_ops or self._bytes >= self.max_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = gevent.spawn_later(self.delay_s, self._flush_from_timer)

    def _flush_from_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Sends everything buffered and waits for the replies (failures counted, logged)."""
        if self._timer is not None and self._timer is not gevent.getcurrent():
            self._timer.kill(block=False)
            self._timer = None
        with self._lock:
            batch, self._pending, self._bytes = self._pending, [], 0
            if batch:
                send(batch, self.stats, self.flush_timeout_s)


class ConnectionBuffers:
    """The oneway buffers of one handler: one `WriteBuffer` per Thrift connection (kept in
    the connection's state and flushed when it closes); a direct call (no connection) sends
    at once."""

    def __init__(self, stats: WriteStats, max_ops: int, max_bytes: int, delay_s: float,
                 flush_timeout_s: float) -> None:
        self.stats = stats
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.delay_s = delay_s
        self.flush_timeout_s = flush_timeout_s

    def flush_current(self) -> None:
        """Sends the calling connection's buffered writes (before it is served anything
        else, so it reads its own writes)."""
        ctx = current_call()
        if ctx is not None:
            buf = ctx.connection.state.get(_BUFFER_KEY)
            if buf is not None and len(buf):
                buf.flush()

    def enqueue(self, write: PendingWrite) -> None:
        ctx = current_call()
        if ctx is None:
            send([write], self.stats, self.flush_timeout_s)
            return
        buf = ctx.connection.state.get(_BUFFER_KEY)
        if buf is None:
            buf = WriteBuffer(self.stats, self.max_ops, self.max_bytes, self.delay_s,
                              self.flush_timeout_s)
            ctx.connection.state[_BUFFER_KEY] = buf
            ctx.connection.on_close(buf.flush)
        buf.add(write)

    def rejected(self, key: str, e: ServiceError) -> None:
        """Counts a oneway write refused before it was buffered (a bad key or value)."""
        self.stats.failed += 1
        self.stats.last_error = e.message
        log.warning("oneway write of %r rejected: %s", key[:80], e.message)


def send(batch: list[PendingWrite], stats: WriteStats, timeout_s: float) -> None:
    """One pipelined write per server, servers in parallel, order kept within a server."""
    groups: dict[Server, list[PendingWrite]] = {}
    for w in batch:
        groups.setdefault(w.server, []).append(w)
    deadline = time.monotonic() + timeout_s
    stats.flushes += 1

    def run(server: Server, writes: list[PendingWrite]) -> None:
        cmds = [w.command for w in writes]
        try:
            replies = server.call(lambda c, dl: c.pipeline(cmds, dl), deadline, idempotent=False)
        except ServiceError as e:
            _failed(stats, writes, e.message)
            return
        for w, reply in zip(writes, replies, strict=True):
            if isinstance(reply, bytes) and reply in w.ok:
                stats.sent += 1
            else:
                _failed(stats, [w], repr(reply))

    if len(groups) == 1:
        ((server, writes),) = groups.items()
        run(server, writes)
        return
    jobs = [gevent.spawn(run, s, ws) for s, ws in groups.items()]
    try:
        gevent.joinall(jobs)
    finally:
        gevent.killall([j for j in jobs if not j.dead])


def _failed(stats: WriteStats, writes: list[PendingWrite], why: str) -> None:
    stats.failed += len(writes)
    stats.last_error = why
    log.warning(
        "%d oneway write(s) failed (first key %r): %s", len(writes), writes[0].key, why
    )

