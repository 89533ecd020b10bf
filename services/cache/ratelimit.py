"""Fixed-window rate limiting on memcached counters, correct across service instances.

A window of `window_ms` is numbered ``floor(now_ms / window_ms)`` (Unix time), and each
(key, window) pair has its own counter ``rl:<key>:<window number>``. One attempt is one atomic
meta arithmetic command, ``ma rl:<key>:<n> N<ttl> J1 D1 v``: it creates the counter at 1 when
it is missing (memcached holds the item lock for the create, so concurrent first attempts on
any number of instances count 1, 2, 3, ... exactly) or adds one. The attempt is allowed while
the count is at most `limit`; attempts over the limit still count, so a client that keeps
hammering stays refused until the window ends. The counter's TTL is the window rounded up to
whole seconds plus one (at most 30 days), so old windows leave memcached by themselves.

Because windows are numbered from wall-clock time, instances must keep their clocks in sync
(NTP); a skew of s ms moves that instance's window boundaries by s ms. Being refused is a
result (`RateLimit.allowed` false), not an error.
"""

from __future__ import annotations

import time

from glammp.cache.ttypes import RateLimit
from services.cache.client import MAX_RELATIVE_TTL_S, Cluster
from services.core import errors

#: The counter key is this, the caller's key, ":" and the window number.
KEY_PREFIX = "rl:"
#: Longest window, ms (memcached's largest relative TTL).
MAX_WINDOW_MS = MAX_RELATIVE_TTL_S * 1000


def check(limit: int, window_ms: int) -> None:
    """ServiceError(400) unless 0 <= limit and 1 <= window_ms <= 30 days."""
    if limit is None or limit < 0:
        raise errors.bad_request(f"limit {limit} must be >= 0", argument="limit", rule=">= 0")
    if window_ms is None or not 1 <= window_ms <= MAX_WINDOW_MS:
        raise errors.bad_request(
            f"window_ms {window_ms} out of range", argument="window_ms",
            rule=f"1..{MAX_WINDOW_MS} ms",
        )


def attempt(
    cluster: Cluster,
    key: str,
    limit: int,
    window_ms: int,
    deadline: float,
    server_key: str | None = None,
    ns: str = "",
    now_ms: int | None = None,
) -> RateLimit:
    """Counts one attempt for `key` in the current window. 400 for bad arguments (the final
    counter key must also fit 250 bytes); memcached failures as in `services.cache.client`
    (never retried here: a lost reply may or may not have counted)."""
    check(limit, window_ms)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    window = now // window_ms
    k = cluster.resolve(f"{KEY_PREFIX}{key}:{window}", server_key, ns)
    # Past 30 days memcached would read the TTL as a Unix time (long gone: instant expiry).
    ttl_s = min(-(-window_ms // 1000) + 1, MAX_RELATIVE_TTL_S)
    count = cluster.arithmetic(k, 1, False, 1, ttl_s, deadline)
    if count is None:
        raise errors.bad_gateway(f"rate counter for {key!r} not created", key=key)
    return RateLimit(allowed=count <= limit, count=count, reset_ms=(window + 1) * window_ms - now)
