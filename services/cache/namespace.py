"""Namespaces: every key under a name invalidated at once, in O(1), by moving a version on.

A namespace ``users`` has a version counter in its pool under the key ``ns:users`` (the
pool's prefix applies). An item key ``42`` under it is stored as ``users:<version>:42``;
`invalidate` adds one to the counter, so every item written under the old version becomes
unreachable at once and ages out of memcached's LRU (nothing is deleted). The 250-byte key
limit applies to the final key, namespace and version included.

The counter is read and, when missing, created in the same atomic meta arithmetic command
(``ma ns:users N0 J<now_ms> D0 v``). A new counter starts at the current Unix time in ms rather
than 0 or 1: if memcached evicts the counter, the re-created one must not equal a version that
items were written under, or those items would come back. (That holds unless a namespace was
invalidated more than about a thousand times a second before the eviction.)

Each call that names a namespace costs one extra round trip to the server holding its counter;
versions are not cached in the process, so an invalidation through one instance is seen by
the next call through any other.
"""

from __future__ import annotations

import re
import time

from services.cache.client import Cluster, Key
from services.core import errors

#: The version counter's key is this plus the namespace name.
VERSION_KEY_PREFIX = "ns:"
#: Longest namespace name, bytes.
MAX_NAME_BYTES = 100
_NAME = re.compile(r"[\x21-\x7e]+\Z")


def check_name(ns: str) -> str:
    """`ns` when it is a valid namespace name; ServiceError(400) naming the rule otherwise."""
    if not ns or len(ns.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or not _NAME.match(ns):
        raise errors.bad_request(
            f"bad namespace {ns[:40]!r}", argument="ns",
            rule=f"1-{MAX_NAME_BYTES} bytes of printable ASCII without spaces",
        )
    return ns


def _version_key(cluster: Cluster, ns: str) -> Key:
    return cluster.resolve(VERSION_KEY_PREFIX + check_name(ns))


def _bump(cluster: Cluster, ns: str, delta: int, deadline: float) -> int:
    now_ms = int(time.time() * 1000)
    value = cluster.arithmetic(_version_key(cluster, ns), delta, False, now_ms, 0, deadline)
    if value is None:  # the initial value makes memcached create a missing counter
        raise errors.bad_gateway(f"namespace {ns!r}: counter not created", ns=ns)
    return value


def key_prefix(cluster: Cluster, ns: str, deadline: float) -> str:
    """The prefix the items of `ns` carry now (``<ns>:<version>:``); creates the counter when
    it is missing. 400 for a bad name; the memcached errors of `Cluster.arithmetic`."""
    return f"{ns}:{_bump(cluster, ns, 0, deadline)}:"


def invalidate(cluster: Cluster, ns: str, deadline: float) -> int:
    """Moves `ns` to a new version (every item under it is unreachable from now); the new
    version. Not idempotent: a retry after a timeout invalidates again, which is harmless."""
    return _bump(cluster, ns, 1, deadline)
