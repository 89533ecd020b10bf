"""A gevent-native memcached client for one named pool: ring, servers and commands.

`Cluster` owns the `Server`s of a pool (each with its bounded connection pool, failure count
and get batcher, see `services.cache.server`) and a libmemcached-compatible `Ring` over the
live ones. Callers resolve a key once (`resolve`), which validates it and picks its server,
then run commands with an absolute deadline (a `time.monotonic()` instant).

Writes always wait for memcached's reply. Multi-key commands are grouped by server and the
per-server requests run in parallel greenlets, one request (or one pipelined write) per
server; if the calling greenlet is interrupted, those greenlets are killed and their
connections closed.

Error mapping — the one place memcached failures become `ServiceError`:

=====================================================  ====  ==========================
what happened                                          code  retryable
=====================================================  ====  ==========================
bad key / value / argument (checked before sending)    400   no
memcached: CLIENT_ERROR non-numeric value (counters)   400   no
memcached: SERVER_ERROR object too large for cache     413   no
memcached: SERVER_ERROR out of memory                  507   no
server marked down, connect failed, no free            503   yes (nothing was sent)
connection before the deadline, no live server
connection lost after the request was sent             503   only for reads and other
                                                             idempotent commands
no reply before the I/O deadline                       504   only for idempotent commands
reply out of sync / unexpected / other refusals        502   no
=====================================================  ====  ==========================

Connect failures, lost connections, timeouts and out-of-sync replies count toward the
server's failure limit; refusals (413/507/400/502 from a well-formed reply) do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import gevent

from services.cache import codec
from services.cache.protocol import Connection, MetaReply, ServerReplyError
from services.cache.ring import Node, Ring
from services.cache.server import Server, ServerSettings, ValueTuple
from services.core import errors
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: memcached's largest relative expiry (30 days, seconds); larger values are Unix times.
MAX_RELATIVE_TTL_S = 60 * 60 * 24 * 30
_MAX_U64 = 2**64 - 1


class Key(NamedTuple):
    """A validated key: the caller's name, the bytes sent (prefix included) and its server."""

    name: str
    wire: bytes
    server: Server


class Cluster:
    """The servers of one pool and the ring that chooses among them.

    `eject`: a server marked down leaves the ring (its keys remap exactly as libmemcached's
    REMOVE_FAILED_SERVERS remaps them) until a probe sees it answer; without it, its keys
    fail fast with 503 while it is down. Modula never remaps (nor does libmemcached).
    """

    def __init__(
        self,
        name: str,
        nodes: Sequence[Node],
        distribution: str = "ketama",
        prefix: bytes = b"",
        hash_with_prefix: bool = False,
        eject: bool = False,
        settings: ServerSettings | None = None,
    ) -> None:
        self.name = name
        self.nodes = tuple(nodes)
        self.distribution = distribution
        self.prefix = prefix
        self.hash_with_prefix = hash_with_prefix
        self.eject = eject
        self.settings = settings or ServerSettings()
        self.servers = [Server(n, self.settings, self._health_changed) for n in self.nodes]
        self._ring: Ring | None = Ring(self.nodes, distribution)

    def _health_changed(self, server: Server) -> None:
        if not self.eject or self.distribution == "modula":
            return
        live = [i for i, s in enumerate(self.servers) if not s.down]
        self._ring = Ring(self.nodes, self.distribution, live) if live else None
        log.warning(
            "pool %s ring rebuilt over %d/%d servers after %s changed",
            self.name, len(live), len(self.servers), server.address,
        )

    @property
    def ring(self) -> Ring | None:
        """The ring in use now (None while every server of an ejecting pool is down)."""
        return self._ring

    # -- keys ------------------------------------------------------------------------------

    def server_for(self, hash_key: bytes) -> Server:
        """The server owning `hash_key` (item or server key, without the prefix)."""
        ring = self._ring
        if ring is None:
            raise errors.unavailable(f"every server of pool {self.name!r} is down", pool=self.name)
        source = self.prefix + hash_key if self.hash_with_prefix else hash_key
        return self.servers[ring.index_for(source)]

    def resolve(self, key: str, server_key: str | None = None, ns: str = "") -> Key:
        """Validates `key` (and `server_key`, pecl's *ByKey) and picks the server; 400/503.
        `ns` is a namespace's versioned key prefix (`services.cache.namespace`): it is part
        of the key sent and hashed, and counts toward the 250-byte limit, while `Key.name`
        stays the caller's key."""
        wire = codec.check_key(ns + key, self.prefix) if ns else codec.check_key(key, self.prefix)
        if server_key is None:
            hashed = wire[len(self.prefix) :]
        else:
            hashed = codec.check_key(server_key, what="server_key")
        return Key(key, wire, self.server_for(hashed))

    def adopt(self, key: Key, source: Cluster) -> Key:
        """`key` of the `source` pool as this pool stores it (this pool's prefix and ring, the
        same caller name), for routes between pools (gutter, replicas). 400 when this
        pool's prefix makes it too long."""
        moved = self.resolve(key.wire[len(source.prefix):].decode())
        return Key(key.name, moved.wire, moved.server)

    def resolve_many(
        self, names: Sequence[str], server_key: str | None = None, ns: str = ""
    ) -> list[Key]:
        """`resolve` for many keys (the multi-key hot path: same checks, fewer calls)."""
        if ns:
            return [self.resolve(name, server_key, ns) for name in names]
        prefix = self.prefix
        room = codec.MAX_KEY_BYTES - len(prefix)
        fixed = self.resolve(names[0], server_key).server if server_key and names else None
        ring = self._ring
        if ring is None and fixed is None and names:
            self.server_for(b"")  # raises the 503
        servers = self.servers
        single = len(servers) == 1
        hash_prefix = prefix if self.hash_with_prefix else b""
        out = []
        new_key = tuple.__new__  # Key(...) without NamedTuple's __new__ (hot loop)
        for name in names:
            raw = name.encode("utf-8", "surrogatepass")
            if not raw or len(raw) > room or raw.translate(None, codec.PRINTABLE_BYTES):
                codec.check_key(name, prefix)  # raises the 400 naming the rule
            if fixed is not None:
                server = fixed
            elif single:
                server = servers[0]
            else:
                server = servers[ring.index_for(hash_prefix + raw)]  # type: ignore[union-attr]
            out.append(new_key(Key, (name, prefix + raw, server)))
        return out

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: Key, deadline: float) -> ValueTuple | None:
        """(flags, value, cas) or None; coalesced with concurrent reads of the same server."""
        return key.server.get(key.wire, deadline)

    def get_many(self, keys: Sequence[Key], deadline: float) -> dict[bytes, ValueTuple]:
        """wire key -> (flags, value, cas) for the hits; one ``gets`` per server, in parallel.
        `keys` must be distinct. The first server error is raised (after every server
        answered or failed)."""
        found, failed = self.fetch_many(keys, deadline)
        if failed:
            raise next(iter(failed.values()))
        return found

    def fetch_many(
        self, keys: Sequence[Key], deadline: float, command: bytes = b"gets"
    ) -> tuple[dict[bytes, ValueTuple], dict[Server, ServiceError]]:
        """Like `get_many` (`command` may be ``gats <ttl>``), but a failing server does not
        hide the others' answers: (hits, the ServiceError of each server that failed)."""
        groups = _group(keys)
        results = self._fan_out(
            groups,
            lambda server, ks: server.call(
                lambda c, dl: c.retrieve(command, [k.wire for k in ks], dl),
                deadline,
                idempotent=True,
            ),
        )
        found: dict[bytes, ValueTuple] = {}
        failed: dict[Server, ServiceError] = {}
        for server, part in results.items():
            if isinstance(part, ServiceError):
                failed[server] = part
            else:
                found.update(part)
        return found, failed

    def meta(
        self, key: Key, verb: bytes, flags: bytes, deadline: float, idempotent: bool
    ) -> MetaReply:
        """One meta command (`verb` ``mg``/``md``/``ma``) on the key's server: ``verb key
        flags`` (e.g. flags ``v c f t N30``), its parsed reply."""
        line = verb + b" " + key.wire + (b" " + flags if flags else b"")
        return key.server.call(lambda c, dl: c.meta(line, dl), deadline, idempotent=idempotent)

    def get_and_touch(self, key: Key, ttl: int, deadline: float) -> ValueTuple | None:
        check_ttl(ttl)
        found = key.server.call(
            lambda c, dl: c.retrieve(b"gats %d" % ttl, [key.wire], dl), deadline, idempotent=True
        )
        return found.get(key.wire)

    # -- writes ----------------------------------------------------------------------------

    def store(
        self,
        verb: bytes,
        key: Key,
        value: bytes,
        flags: int,
        ttl: int,
        deadline: float,
        cas: int = 0,
    ) -> bytes:
        """``set``/``add``/``replace``/``append``/``prepend``/``cas``: the reply word."""
        check_ttl(ttl)
        reply = key.server.call(
            lambda c, dl: c.storage([(verb, key.wire, flags, ttl, value, cas)], dl)[0],
            deadline,
            idempotent=verb == b"set",
        )
        return _word(reply, key.server)

    def store_many(
        self, items: Sequence[tuple[Key, bytes, int]], ttl: int, verb: bytes, deadline: float
    ) -> dict[bytes, bytes | ServiceError]:
        """Pipelined stores (key, value, flags), one write per server in parallel:
        wire key -> reply word, or the ServiceError of that key (or of its whole server)."""
        check_ttl(ttl)
        groups: dict[Server, list[tuple[Key, bytes, int]]] = {}
        for item in items:
            groups.setdefault(item[0].server, []).append(item)

        def run(server: Server, group: list[tuple[Key, bytes, int]]) -> list[bytes | Exception]:
            cmds = [(verb, k.wire, flags, ttl, value, 0) for k, value, flags in group]
            replies = server.call(lambda c, dl: c.storage(cmds, dl), deadline, idempotent=False)
            return [_word_or_error(r, server) for r in replies]

        keys = {s: [item[0] for item in g] for s, g in groups.items()}
        return _per_key(keys, self._fan_out(groups, run))

    def touch(self, key: Key, ttl: int, deadline: float) -> bool:
        check_ttl(ttl)
        line = b"touch %s %d" % (key.wire, ttl)
        reply = key.server.call(lambda c, dl: c.command(line, dl), deadline, idempotent=True)
        return _expect(reply, {b"TOUCHED": True, b"NOT_FOUND": False}, key.server)

    def delete(self, key: Key, deadline: float) -> bool:
        line = b"delete " + key.wire
        reply = key.server.call(lambda c, dl: c.command(line, dl), deadline, idempotent=True)
        return _expect(reply, {b"DELETED": True, b"NOT_FOUND": False}, key.server)

    def delete_many(
        self, keys: Sequence[Key], deadline: float
    ) -> dict[bytes, bytes | ServiceError]:
        """Pipelined deletes, one write per server in parallel: wire key -> reply word."""
        groups = _group(keys)

        def run(server: Server, group: list[Key]) -> list[bytes | Exception]:
            lines = [b"delete " + k.wire for k in group]
            replies = server.call(
                lambda c, dl: c.pipeline([line + b"\r\n" for line in lines], dl),
                deadline,
                idempotent=True,
            )
            return [_word_or_error(r, server) for r in replies]

        return _per_key(groups, self._fan_out(groups, run))

    def arithmetic(
        self,
        key: Key,
        delta: int,
        decrement: bool,
        initial: int | None,
        ttl: int,
        deadline: float,
    ) -> int | None:
        """Meta ``ma``: the new value (unsigned 64-bit), or None when the counter is missing
        and no `initial` was given. With `initial` a missing counter is created with that
        value and `ttl` (the delta is not applied), which the classic ``incr`` cannot do."""
        if not 0 <= delta <= _MAX_U64:
            raise errors.bad_request(
                f"delta {delta} must be >= 0", argument="delta", rule="0..2^64-1"
            )
        line = b"ma %s D%d" % (key.wire, delta)
        if decrement:
            line += b" MD"
        if initial is not None:
            if not 0 <= initial <= _MAX_U64:
                raise errors.bad_request(
                    f"initial {initial} must be >= 0", argument="initial", rule="0..2^64-1"
                )
            check_ttl(ttl)
            line += b" N%d J%d" % (ttl, initial)
        line += b" v"
        return key.server.call(
            lambda c, dl: c.arithmetic(line, dl), deadline, idempotent=False
        )

    # -- admin -----------------------------------------------------------------------------

    def each_server(
        self, fn: Callable[[Connection, float], T], deadline: float
    ) -> dict[str, T | ServiceError]:
        """Runs `fn` on every server in parallel: address -> result or its ServiceError."""
        groups = {s: [s] for s in self.servers}
        results = self._fan_out(
            groups, lambda server, _: server.call(fn, deadline, idempotent=True)
        )
        return {s.address: r for s, r in results.items()}

    def _fan_out(
        self, groups: dict[Server, list[R]], run: Callable[[Server, list[R]], T]
    ) -> dict[Server, T | ServiceError]:
        """`run(server, group)` for every group, in parallel greenlets (inline for one).
        ServiceErrors are returned per server; anything else is raised."""
        if len(groups) == 1:
            ((server, group),) = groups.items()
            try:
                return {server: run(server, group)}
            except ServiceError as e:
                return {server: e}
        def guarded(server: Server, group: list[R]) -> T | ServiceError:
            # A ServiceError is an answer, not a crash: returned, so that gevent's hub does
            # not print it as an unhandled greenlet error.
            try:
                return run(server, group)
            except ServiceError as e:
                return e

        greenlets = {s: gevent.spawn(guarded, s, g) for s, g in groups.items()}
        try:
            gevent.joinall(list(greenlets.values()))
        finally:
            # The caller was interrupted (deadline, kill): stop the requests in flight; their
            # connections are closed by the pool because they did not complete.
            gevent.killall([g for g in greenlets.values() if not g.dead])
        out: dict[Server, T | ServiceError] = {}
        for server, g in greenlets.items():
            if g.successful():
                out[server] = g.value
            elif isinstance(g.exception, ServiceError):
                out[server] = g.exception
            else:
                raise errors.internal(
                    f"request to memcached {server.address} failed: {g.exception!r}"
                )
        return out

    def close(self) -> None:
        for server in self.servers:
            server.close()


def check_ttl(ttl: int) -> None:
    if ttl < 0:
        raise errors.bad_request(
            f"ttl {ttl} is negative", argument="ttl",
            rule=f"0 (never), 1..{MAX_RELATIVE_TTL_S} seconds, or a Unix time",
        )


def _group(keys: Sequence[Key]) -> dict[Server, list[Key]]:
    if keys and all(k.server is keys[0].server for k in keys):
        return {keys[0].server: list(keys)}
    groups: dict[Server, list[Key]] = {}
    for k in keys:
        groups.setdefault(k.server, []).append(k)
    return groups


def _per_key(
    groups: dict[Server, list[Key]],
    results: dict[Server, list[bytes | Exception] | ServiceError],
) -> dict[bytes, bytes | ServiceError]:
    out: dict[bytes, bytes | ServiceError] = {}
    for server, group in groups.items():
        result = results[server]
        for i, key in enumerate(group):
            if isinstance(result, ServiceError):
                out[key.wire] = result
            else:
                r = result[i]
                out[key.wire] = r if isinstance(r, bytes | ServiceError) else errors.internal(
                    str(r)
                )
    return out


def _word(reply: bytes | ServerReplyError, server: Server) -> bytes:
    if isinstance(reply, ServerReplyError):
        raise server.reply_error(reply)
    return reply


def _word_or_error(reply: bytes | ServerReplyError, server: Server) -> bytes | Exception:
    if isinstance(reply, ServerReplyError):
        return server.reply_error(reply)
    return reply


def _expect(reply: bytes, meanings: dict[bytes, bool], server: Server) -> bool:
    try:
        return meanings[reply]
    except KeyError:
        raise errors.bad_gateway(
            f"unexpected reply from memcached {server.address}: {reply[:80]!r}",
            server=server.address,
        ) from None
