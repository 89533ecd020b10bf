"""The path cache: a file's storage URLs in memcached, so hot reads skip the tracker.

Entries live in a memcached pool reached through the cache service's client
(`services.cache.client.Cluster`), so several filestore instances share them and an
invalidation by one is seen by all. Keys are ``<prefix>`` + SHA-1 of (zone, domain, key):
MogileFS keys may hold bytes memcached keys cannot. The value records how many paths were
asked for, so a later request for more paths is a miss.

The cache is an optimisation, never a source of failure: a memcached error on a lookup is a
miss, on a store is ignored, and on an invalidation is logged (the entry then lives at most
`ttl_s` seconds). Entries are invalidated when a key is overwritten, removed, renamed or
changes class.
"""

from __future__ import annotations

import hashlib
import logging
import time

from services.cache.client import Cluster
from services.core.context import current_call
from services.core.errors import ServiceError

log = logging.getLogger(__name__)

#: Longest a cache operation may take, in seconds (the tracker is the fallback).
CACHE_TIMEOUT_S = 0.5
#: The zones one key's entries may exist under (all are invalidated together).
ZONES = ("", "alt")


class PathCache:
    """get/put/invalidate of path lists in `cluster`, entries kept `ttl_s` seconds."""

    def __init__(self, cluster: Cluster, ttl_s: int, prefix: str = "glammp:fs:") -> None:
        self.cluster = cluster
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.hits = 0
        self.misses = 0

    def _name(self, domain: str, key: str, zone: str) -> str:
        digest = hashlib.sha1(f"{zone}\0{domain}\0{key}".encode("utf-8", "surrogateescape"))
        return self.prefix + digest.hexdigest()

    @staticmethod
    def _deadline() -> float:
        limit = time.monotonic() + CACHE_TIMEOUT_S
        ctx = current_call()
        return min(limit, ctx.deadline) if ctx is not None else limit

    def get(self, domain: str, key: str, zone: str, pathcount: int) -> list[str] | None:
        """The cached paths (at most `pathcount`), or None on a miss or cache failure."""
        try:
            found = self.cluster.get(self.cluster.resolve(self._name(domain, key, zone)),
                                     self._deadline())
        except ServiceError as e:
            log.warning("path cache lookup failed (treated as a miss): %s", e.message)
            found = None
        if found is not None:
            head, *paths = found[1].decode("utf-8", "replace").split("\n")
            if head.isdigit() and (int(head) >= pathcount or len(paths) < int(head)) and paths:
                self.hits += 1
                return paths[:pathcount]
        self.misses += 1
        return None

    def put(self, domain: str, key: str, zone: str, pathcount: int, paths: list[str]) -> None:
        """Caches the tracker's answer to a request for `pathcount` paths (not an empty one)."""
        if not paths:
            return
        value = "\n".join([str(pathcount), *paths]).encode()
        try:
            self.cluster.store(b"set", self.cluster.resolve(self._name(domain, key, zone)),
                               value, 0, self.ttl_s, self._deadline())
        except ServiceError as e:
            log.warning("path cache store failed (ignored): %s", e.message)

    def invalidate(self, domain: str, key: str) -> None:
        """Forgets every cached entry of (domain, key)."""
        for zone in ZONES:
            try:
                self.cluster.delete(self.cluster.resolve(self._name(domain, key, zone)),
                                    self._deadline())
            except ServiceError as e:
                log.warning("path cache invalidation of %r failed; the entry expires within "
                            "%ds: %s", key, self.ttl_s, e.message)

    def close(self) -> None:
        self.cluster.close()
