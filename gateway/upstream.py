"""Upstream instances: shared framed-binary connections, health, and the choice of instance.

Connections (`Link`)
    Each instance has up to `connections_per_instance` framed strict-binary connections.
    Calls from many callers share them: the gateway gives every request a fresh sequence id
    on its connection, and the connection's read callback (run by the event loop, not a
    greenlet) hands each reply to the call waiting for that id. A call takes an idle
    connection, else opens one while the instance has fewer than its limit, else shares the
    one with the fewest calls (pipelined, up to `pipeline_depth`). The requests queued on a
    connection in one turn of the event loop go out in one write. glammp servers run a
    connection's requests concurrently and answer each as it finishes, so a pipelined call
    never waits for a slow one ahead of it.

    A connection that fails (reset, EOF, garbage) is closed and every call waiting on it
    fails with `LostAfterSend`. A connection on which a call ran out of time is retired:
    it takes no new calls, no longer counts against `connections_per_instance`, and closes
    when its last waiting call is gone, because a reply that never came means the instance
    may be stuck behind it.

Errors and what they mean for a retry
    * `NotSent`: the request never left the gateway (connect refused or timed out, every
      connection full, instance draining). Always safe to send elsewhere.
    * `LostAfterSend`: the connection died after the request was written; the instance may
      have run it. Only idempotent methods may be sent again.
    A call sent with `Instance.submit` (every caller's call) learns these through its
    `not_sent` / `lost` methods, or raises NotSent at once; its deadline is the gateway's
    to watch, which calls `Link.abandon`. For `Link.exchange` (health checks, status
    queries, oneway writes) they are raised, and the caller's deadline (a `gevent.Timeout`)
    passes straight through; the connection is retired (waiting) or closed (interrupted
    mid-write, since its stream is now torn).

Health (`Instance`)
    `up`, `down` (ejected) or `draining`. Passive: `eject_after_failures` consecutive
    failures eject the instance for `ejection_ms`. Active: a checker sends `Base:getStatus`
    every `health_interval_ms`; ALIVE or WARNING brings it up, STOPPING/STOPPED marks it
    draining (no new calls), no answer ejects it.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.event
from gevent.hub import Waiter, get_hub
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from gateway import wire
from gateway.config import GatewayConfig, parse_address
from glammp.base import Base
from glammp.base.ttypes import Status
from services.core import sockets
from services.core.metrics import Metrics

log = logging.getLogger(__name__)

#: Bytes read from an upstream socket at once.
RECV_BYTES = 256 * 1024
#: Instance states.
UP = "up"
DOWN = "down"
DRAINING = "draining"


class NotSent(Exception):
    """The request did not leave the gateway; sending it to another instance is safe.

    `instance_fault` tells whether the instance is to blame (a refused connect counts
    towards ejection; a full pool or a drain does not)."""

    def __init__(self, message: str, instance_fault: bool = True) -> None:
        super().__init__(message)
        self.instance_fault = instance_fault


class WouldWait(Exception):
    """`submit(..., wait=False)`: the call needs a connection that is still to be opened
    (or being opened), which takes a greenlet that may wait; nothing was sent."""


class LostAfterSend(Exception):
    """The connection failed after the request was written; it may have run upstream."""


class Call(Protocol):
    """What `Instance.submit` sends, and tells of its outcome (the gateway's call in
    flight)."""

    mtype: int
    name: str
    prefix: bytes  # the CALL message header up to the seqid
    body: memoryview
    oneway: bool
    link: Link | None
    link_seqid: int

    def replied(self, payload: bytes, body_at: int) -> None: ...
    def lost(self, reason: str) -> None: ...
    def not_sent(self, reason: str) -> None: ...


class Link:
    """One framed-binary connection to an instance, shared by many calls.

    `users` counts the calls holding it; a link nobody holds waits in its instance's idle
    list, so taking one is O(1) whatever the pool size.
    """

    def __init__(self, instance: Instance, sock: socket.socket) -> None:
        self.instance = instance
        self.sock = sock
        self.raw = sockets.raw_of(sock)
        # What waits for each seqid's reply: a call (`submit`) or a greenlet (`exchange`).
        self.pending: dict[int, Waiter | Call] = {}
        self.next_seqid = random.randrange(1 << 20)
        self.users = 0
        self.in_idle = False
        # Frames waiting to be sent (see `_queue`), and their seqids (-1: oneway).
        self.outbox: list[bytes] = []
        self.queued: list[int] = []
        self.flushing = False
        self.flush_due = False
        self.retiring = False
        self.closed = False
        # The start of a reply whose end has not arrived yet (appended to in place, so a
        # large reply read in many pieces is not copied over and over).
        self.rest = bytearray()
        # Replies are read by a callback of the event loop, not a greenlet: no switch per
        # read (`_readable`).
        assert self.raw is not None
        self.watcher = get_hub().loop.io(self.raw.fileno(), 1)
        self.watcher.start(self._readable)

    def exchange(self, mtype: int, name: str, body: bytes | memoryview,
                 oneway: bool) -> bytes | None:
        """Sends one call and waits for its reply payload (binary, with this link's seqid).

        Returns None for oneway calls once written. Raises NotSent, LostAfterSend, or the
        caller's gevent.Timeout.
        """
        if self.closed:
            raise NotSent("connection closed")
        seqid = self.next_seqid = (self.next_seqid + 1) & 0x7FFFFFFF
        data = wire.framed_message(mtype, name, seqid, body)
        if oneway:
            # Sent now, from this greenlet: nothing will wait for a reply, so a write that
            # fails must be known here, while the call can still go to another instance.
            self._queue(data, -1)
            self._flush()
            if self.closed:
                raise NotSent("write failed")
            return None
        waiter = Waiter()
        self.pending[seqid] = waiter
        try:
            self._queue(data, seqid)
            reply: bytes = waiter.get()
            return reply
        except gevent.Timeout:
            if self.pending.pop(seqid, None) is not None and not self.closed:
                # The reply never came: the instance may be stuck behind this call.
                self.retiring = True
            raise
        finally:
            self.pending.pop(seqid, None)

    def abandon(self, call: Call) -> None:
        """`call` ran out of time: its reply will not be waited for, and since the instance
        may be stuck behind it, the link takes no new calls."""
        if self.pending.pop(call.link_seqid, None) is not None and not self.closed:
            self.retiring = True

    def release(self) -> None:
        """A call is done with this link: back to the idle list, or closed if retiring."""
        self.users -= 1
        if self.users > 0:
            return
        if self.retiring or self.closed:
            self.close("retired")
        elif not self.in_idle:
            self.in_idle = True
            self.instance.idle.append(self)

    def _queue(self, data: bytes, seqid: int) -> None:
        """Queues the frame of a call that waits for its reply; everything queued in one turn
        of the event loop goes out in one write once the turn's callers have run (many
        callers' calls share one send, and the instance reads them in one recv). A write
        that fails fails the queued calls with NotSent (via their waiters or call objects)
        and closes the link."""
        self.outbox.append(data)
        self.queued.append(seqid)
        if not (self.flush_due or self.flushing):
            self.flush_due = True
            get_hub().loop.run_callback(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        if self.flushing or self.closed or not self.outbox:
            return
        batch = self.outbox[0] if len(self.outbox) == 1 else b"".join(self.outbox)
        unsent = self.queued
        self.outbox, self.queued = [], []
        sent = 0
        try:
            if self.raw is not None:
                sent = self.raw.send(batch)
        except BlockingIOError:
            pass
        except OSError as e:
            self._fail_unsent(unsent, f"write failed: {e}")
            return
        if sent < len(batch):
            # The hub must not wait: a greenlet writes the rest, and what is queued meanwhile.
            self.flushing = True
            gevent.spawn(self._write_rest, memoryview(batch)[sent:], unsent if not sent else [])

    def _write_rest(self, rest: memoryview, unsent: list[int]) -> None:
        try:
            while True:
                try:
                    self.sock.sendall(rest)
                except OSError as e:
                    self._fail_unsent(unsent + self.queued, f"write failed: {e}")
                    return
                if not self.outbox or self.closed:
                    return
                rest = memoryview(b"".join(self.outbox))
                unsent, self.outbox, self.queued = self.queued, [], []
        except BaseException:
            if not self.closed:
                self.close("interrupted while writing")
            raise
        finally:
            self.flushing = False

    def _fail_unsent(self, unsent: list[int], reason: str) -> None:
        run_callback = get_hub().loop.run_callback
        for sid in unsent:
            entry = self.pending.pop(sid, None)
            if entry is None:
                continue
            if not isinstance(entry, Waiter):
                entry.not_sent(reason)
            elif entry.greenlet is not gevent.getcurrent():
                run_callback(entry.throw, NotSent(reason))
        self.close(reason)

    def _readable(self) -> None:
        """Reads what the instance sent and hands each whole reply to what waits for its
        seqid. Runs in the event loop, so nothing here may wait."""
        assert self.raw is not None
        try:
            data: bytes | bytearray = self.raw.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            self.close(str(err))
            return
        if not data:
            self.close("closed by upstream")
            return
        rest = self.rest
        if rest:
            rest += data
            data = rest
        max_frame = self.instance.max_frame_bytes
        pending = self.pending
        at, n = 0, len(data)
        try:
            while n - at >= 4:
                size = int.from_bytes(data[at : at + 4], "big", signed=True)
                if size <= 0 or size > max_frame:
                    raise wire.WireError(f"upstream frame of {size} bytes")
                if at + 4 + size > n:
                    break
                payload = (bytes(memoryview(data)[at + 4 : at + 4 + size]) if data is rest
                           else bytes(data[at + 4 : at + 4 + size]))
                at += 4 + size
                # The seqid, and where the body starts (0: not a binary message).
                end = 8 + int.from_bytes(payload[4:8], "big", signed=True)
                if payload[:2] != b"\x80\x01" or end < 8 or end + 4 > size:
                    seqid, body_at = wire.binary_seqid(payload), 0
                else:
                    seqid = int.from_bytes(payload[end : end + 4], "big", signed=True)
                    body_at = end + 4
                entry = pending.pop(seqid, None)
                if entry is None:
                    continue
                if isinstance(entry, Waiter):
                    get_hub().loop.run_callback(entry.switch, payload)
                else:
                    entry.replied(payload, body_at)
        except wire.WireError as e:
            self.close(str(e))
            return
        except Exception:
            log.exception("upstream %s: unexpected error handling a reply",
                          self.instance.address)
            self.close("internal error")
            return
        if at == n:
            if rest:
                self.rest = bytearray()
        elif at or data is not rest:
            self.rest = bytearray(memoryview(data)[at:])

    def close(self, reason: str) -> None:
        """Closes the socket and fails every waiting call with LostAfterSend."""
        if self.closed:
            return
        self.closed = True
        self.instance.forget(self)
        if self.in_idle:
            self.in_idle = False
            self.instance.idle.remove(self)
        if self.pending:
            log.info("upstream %s connection lost: %s (%d calls waiting)",
                     self.instance.address, reason, len(self.pending))
            run_callback = get_hub().loop.run_callback
            lost = f"{self.instance.address}: {reason}"
            pending, self.pending = self.pending, {}
            for entry in pending.values():
                if isinstance(entry, Waiter):
                    run_callback(entry.throw, LostAfterSend(lost))
                else:
                    entry.lost(lost)
        self.watcher.stop()  # before the socket closes (this may be its own callback)
        self.sock.close()


class Instance:
    """One upstream process (host:port) of a service: its links, load and health."""

    def __init__(self, service: str, address: str, config: GatewayConfig,
                 metrics: Metrics) -> None:
        self.service = service
        self.address = address
        self.host, self.port = parse_address(address)
        self.metrics = metrics
        self.links: list[Link] = []
        self.idle: list[Link] = []
        # The connection the last call went out on (`submit` keeps filling it this turn).
        self.current: Link | None = None
        self.connecting = 0
        self._connected = gevent.event.Event()
        self.outstanding = 0
        self.state = UP
        self.details = ""
        self.failures = 0
        self.ejected_until = 0.0
        self.calls = 0
        self.errors = 0
        # The health checker's own connection, so a full pool never fails a check.
        self._probe: Link | None = None
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        self.max_links = config.connections_per_instance
        self.depth = config.pipeline_depth
        self.connect_timeout_s = config.connect_timeout_ms / 1000.0
        self.eject_after = config.eject_after_failures
        self.ejection_s = config.ejection_ms / 1000.0
        self.max_frame_bytes = config.max_frame_bytes

    def eligible(self, now: float) -> bool:
        return self.state != DRAINING and self.ejected_until <= now

    def link(self, wait: bool = True) -> Link:
        """A connection for one more call, held until `release()`: an idle one, else a new
        one while under `connections_per_instance`, else the least loaded one while under
        `pipeline_depth`. Raises NotSent, or WouldWait (without `wait`) when that takes
        opening a connection or waiting for one."""
        if self.state == DRAINING:
            raise NotSent(f"{self.address} is draining", instance_fault=False)
        link = self._own_link(wait)
        link.users += 1
        return link

    def _own_link(self, wait: bool = True) -> Link:
        idle = self.idle
        while idle:
            link = idle.pop()
            link.in_idle = False
            if not (link.closed or link.retiring):
                return link
        # A retiring connection (a call on it ran out of time) takes no new calls, so it
        # does not count against the limit: it closes once its last call is done.
        live = sum(1 for link in self.links if not link.retiring)
        if live + self.connecting < self.max_links:
            if not wait:
                raise WouldWait()
            return self._connect()
        return self._least_loaded(self.depth, wait)

    def _least_loaded(self, limit: int, wait: bool = True) -> Link:
        best: Link | None = None
        for candidate in self.links:
            if not candidate.retiring and (best is None or candidate.users < best.users):
                best = candidate
        if (best is None or best.users >= limit) and self.connecting:
            # Every connection is still being opened: wait for one (within the caller's
            # deadline) rather than refuse the call.
            if not wait:
                raise WouldWait()
            self._connected.wait()
            return self._own_link()  # the connection opened, or failed: look again
        if best is None or best.users >= limit:
            self.metrics.incr("gateway_upstream_pool_full")
            raise NotSent(f"{self.address}: all {self.max_links} connections are full",
                          instance_fault=False)
        return best

    def _connect(self) -> Link:
        link = self._open()
        self.links.append(link)
        return link

    def _open(self) -> Link:
        self.connecting += 1
        sock = None
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        except OSError as e:
            if sock is not None:
                sock.close()
            self.metrics.incr("gateway_upstream_connect_failures")
            raise NotSent(f"connect to {self.address} failed: {e}") from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            self.connecting -= 1
            # Wake the calls waiting for a connection (they look again either way).
            self._connected.set()
            self._connected = gevent.event.Event()
        self.metrics.incr("gateway_upstream_connections_opened")
        return Link(self, sock)

    def forget(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)

    def submit(self, call: Call, wait: bool = True) -> None:
        """One attempt of `call` on this instance: sent (its outcome comes back to the call),
        or written at once for a oneway call. Raises NotSent, or WouldWait (without `wait`,
        as from the event loop's own callbacks, which must not block).

        While calls are arriving, the connection that already has a write due in this turn
        of the loop takes them too (one write carries them all); otherwise `link()` picks."""
        # Counted first: `link()` may wait for a connection, and calls picking an instance
        # meanwhile must see this one as busier.
        self.outstanding += 1
        self.calls += 1
        link = self.current
        if (link is None or not link.flush_due or link.closed or link.retiring
                or link.users >= self.depth or self.state == DRAINING):
            try:
                link = self.link(wait)
            except WouldWait:
                self.outstanding -= 1
                self.calls -= 1  # not an attempt: it is made again from a greenlet
                raise
            except BaseException:
                self.outstanding -= 1
                raise
            self.current = link
        else:
            link.users += 1
        if call.oneway:
            try:
                link.exchange(call.mtype, call.name, call.body, True)
            finally:
                link.release()
                self.outstanding -= 1
            return
        if link.closed:
            link.release()
            self.outstanding -= 1
            raise NotSent("connection closed")
        seqid = link.next_seqid = (link.next_seqid + 1) & 0x7FFFFFFF
        call.link_seqid = seqid
        call.link = link
        link.pending[seqid] = call
        prefix, body = call.prefix, call.body
        link._queue(b"".join(((len(prefix) + 4 + len(body)).to_bytes(4, "big"), prefix,
                              seqid.to_bytes(4, "big"), body)), seqid)

    def done(self, call: Call) -> None:
        """`call` no longer holds its link (answered, lost or out of time)."""
        link = call.link
        if link is not None:
            call.link = None
            link.release()
            self.outstanding -= 1

    def call(self, mtype: int, name: str, body: bytes | memoryview,
             oneway: bool) -> bytes | None:
        """One attempt that waits in this greenlet (the status page's backend queries); see
        `Link.exchange` for what it raises."""
        self.outstanding += 1
        self.calls += 1
        try:
            link = self.link()
            try:
                return link.exchange(mtype, name, body, oneway)
            finally:
                link.release()
        finally:
            self.outstanding -= 1

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.errors += 1
        self.failures += 1
        if self.failures >= self.eject_after and self.state != DRAINING:
            if self.ejected_until <= time.monotonic():
                log.warning("ejecting upstream %s %s after %d failures", self.service,
                            self.address, self.failures)
                self.metrics.incr("gateway_upstream_ejections")
            self.ejected_until = time.monotonic() + self.ejection_s
            self.state = DOWN

    def check(self, timeout_s: float) -> None:
        """One active health check: Base:getStatus under `timeout_s`."""
        body = wire.binary_message(TMessageType.CALL, "Base:getStatus", 0, b"\x00")
        header = wire.parse_binary(body)
        try:
            with gevent.Timeout(timeout_s):
                if self._probe is not None and self._probe.retiring:
                    self._probe.close("retired")
                if self._probe is None or self._probe.closed:
                    self._probe = self._open()
                reply = self._probe.exchange(TMessageType.CALL, "Base:getStatus",
                                             memoryview(body)[header.body_at:], False)
            assert reply is not None
            status = _status_of(reply)
        except (NotSent, LostAfterSend, gevent.Timeout, wire.WireError, EOFError) as e:
            if self.state != DOWN:
                log.warning("upstream %s %s failed its health check: %s", self.service,
                            self.address, e or "timeout")
            self.state = DOWN
            self.details = str(e) or "health check timed out"
            self.ejected_until = time.monotonic() + self.ejection_s
            return
        if status in (Status.ALIVE, Status.WARNING):
            if self.state != UP:
                log.info("upstream %s %s is up", self.service, self.address)
            self.state = UP
            self.failures = 0
            self.ejected_until = 0.0
            self.details = Status._VALUES_TO_NAMES.get(status, "")
        else:
            self.state = DRAINING
            self.details = Status._VALUES_TO_NAMES.get(status, str(status))

    def retire(self, grace_s: float) -> None:
        """Removed from the config: takes no new calls, and is closed once its calls are
        done (or after `grace_s` seconds)."""
        self.state = DRAINING
        self.details = "removed from the config"
        deadline = time.monotonic() + grace_s
        while self.outstanding and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.close()

    def close(self) -> None:
        for link in list(self.links):
            link.close("gateway closing")
        if self._probe is not None:
            self._probe.close("gateway closing")

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "address": self.address,
            "state": DOWN if self.state == UP and self.ejected_until > now else self.state,
            "details": self.details,
            "outstanding": self.outstanding,
            "connections": len(self.links),
            "calls": self.calls,
            "errors": self.errors,
        }


def _status_of(reply: bytes) -> int:
    header = wire.parse_binary(reply)
    if header.mtype != TMessageType.REPLY:
        raise wire.WireError("getStatus answered with an exception")
    result = Base.getStatus_result()
    result.read(TBinaryProtocol(TMemoryBuffer(reply[header.body_at:])))
    if result.success is None:
        raise wire.WireError("getStatus answered without a status")
    return int(result.success)


class Cluster:
    """The instances of one service and the choice among them: least outstanding calls,
    ties broken at random, ejected and draining instances skipped."""

    def __init__(self, service: str, config: GatewayConfig, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        self.instances: list[Instance] = []
        self._checker: gevent.Greenlet | None = None
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        """Applies a (re)loaded config: instances added, removed or re-tuned."""
        wanted = config.upstreams.get(self.service, [])
        keep = []
        for inst in self.instances:
            if inst.address in wanted:
                inst.configure(config)
                keep.append(inst)
            else:
                gevent.spawn(inst.retire, config.drain_grace_ms / 1000.0)
        known = {i.address for i in keep}
        keep += [Instance(self.service, a, config, self.metrics) for a in wanted
                 if a not in known]
        self.instances = keep
        self.health_interval_s = config.health_interval_ms / 1000.0
        self.health_timeout_s = config.health_timeout_ms / 1000.0

    def pick(self, exclude: tuple[Instance, ...] | list[Instance] = ()) -> Instance | None:
        now = time.monotonic()
        best: Instance | None = None
        low = ties = 0
        for inst in self.instances:
            if inst.state == DRAINING or inst.ejected_until > now or inst in exclude:
                continue
            outstanding = inst.outstanding
            if best is None or outstanding < low:
                best, low, ties = inst, outstanding, 1
            elif outstanding == low:
                # Each of the tied instances ends up chosen with the same chance.
                ties += 1
                if random.randrange(ties) == 0:
                    best = inst
        return best

    def healthy(self) -> int:
        now = time.monotonic()
        return sum(1 for i in self.instances if i.eligible(now))

    def start(self) -> None:
        if self._checker is None:
            self._checker = gevent.spawn(self._check_loop)

    def _check_loop(self) -> None:
        while True:
            group = [gevent.spawn(i.check, self.health_timeout_s) for i in self.instances]
            gevent.joinall(group)
            gevent.sleep(self.health_interval_s)

    def close(self) -> None:
        if self._checker is not None:
            self._checker.kill(block=False)
            self._checker = None
        for inst in self.instances:
            inst.close()


def clusters(config: GatewayConfig, metrics: Metrics,
             existing: dict[str, Cluster] | None = None,
             on_new: Callable[[Cluster], None] | None = None) -> dict[str, Cluster]:
    """The clusters for `config`, reusing (and reconfiguring) `existing` ones."""
    out: dict[str, Cluster] = {}
    old = dict(existing or {})
    for service in config.upstreams:
        cluster = old.pop(service, None)
        if cluster is None:
            cluster = Cluster(service, config, metrics)
            if on_new is not None:
                on_new(cluster)
        else:
            cluster.configure(config)
        out[service] = cluster
    for cluster in old.values():
        cluster.close()
    return out
