"""Fixed-window rate limits against real memcached, with concurrent callers on two handlers."""

from __future__ import annotations

import gevent
import pytest

from glammp.cache.ttypes import Target
from services.cache import ratelimit
from services.core.errors import ServiceError
from tests.cache.conftest import MakeHandler

#: The longest window (30 days): a test crosses a window boundary with odds of about 1 in
#: a million, and the counter's TTL must stay relative (not read as a Unix time).
WINDOW_MS = ratelimit.MAX_WINDOW_MS


def test_counts_and_refuses_over_the_limit(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    cluster = h.pools["default"]
    now = 700 * WINDOW_MS + 1234
    got = [ratelimit.attempt(cluster, "login:bob", 3, WINDOW_MS, 1e18, now_ms=now)
           for _ in range(5)]
    assert [r.allowed for r in got] == [True, True, True, False, False]
    assert [r.count for r in got] == [1, 2, 3, 4, 5]
    assert {r.reset_ms for r in got} == {WINDOW_MS - 1234}
    # The next window starts from zero; another key has its own counter.
    nxt = ratelimit.attempt(cluster, "login:bob", 3, WINDOW_MS, 1e18, now_ms=now + WINDOW_MS)
    assert (nxt.allowed, nxt.count) == (True, 1)
    assert ratelimit.attempt(cluster, "login:eve", 3, WINDOW_MS, 1e18, now_ms=now).count == 1


def test_handler_rate_limit_and_namespace(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    first = h.rate_limit("api:1", 1, WINDOW_MS, None)
    assert first.allowed and first.count == 1 and 0 < first.reset_ms <= WINDOW_MS
    assert not h.rate_limit("api:1", 1, WINDOW_MS, None).allowed
    # Under a namespace it is another counter; invalidating the namespace resets it.
    assert h.rate_limit("api:1", 1, WINDOW_MS, Target(ns="t")).allowed
    assert not h.rate_limit("api:1", 1, WINDOW_MS, Target(ns="t")).allowed
    h.invalidate_namespace("t", None)
    assert h.rate_limit("api:1", 1, WINDOW_MS, Target(ns="t")).allowed
    for limit, window in ((-1, 1000), (1, 0), (1, ratelimit.MAX_WINDOW_MS + 1)):
        with pytest.raises(ServiceError) as info:
            h.rate_limit("k", limit, window, None)
        assert info.value.code == 400
    with pytest.raises(ServiceError) as info:
        h.rate_limit("k" * 240, 1, 1000, None)
    assert info.value.code == 400


def test_1000_concurrent_attempts_on_two_instances(
    servers: list[str], make_handler: MakeHandler
) -> None:
    a, b = make_handler(servers, pool_size=8), make_handler(servers, pool_size=8)
    results: list[bool] = []

    def attempt(i: int) -> None:
        h = a if i % 2 else b
        results.append(h.rate_limit("flood", 100, WINDOW_MS, None).allowed)

    jobs = [gevent.spawn(attempt, i) for i in range(1000)]
    with gevent.Timeout(60):
        gevent.joinall(jobs, raise_error=True)
    assert len(results) == 1000
    assert results.count(True) == 100
    assert a.rate_limit("flood", 100, WINDOW_MS, None).count == 1001
