"""Budgets the gateway keeps: per-caller rate limits and the retry budget.

`RateLimiter` keeps one token bucket per (caller, service) for the services that have a
`[gateway.rate_limits]` entry. A call takes one token; an empty bucket answers how long
until the next token, in milliseconds, which becomes the 429's `retry_after_ms`. At most
`max_buckets` buckets are kept: when full, buckets that have refilled (equivalent to a
fresh one) are dropped, then the oldest half, so memory stays bounded under address churn.

`RetryBudget` lets retries add at most `ratio` of the calls (plus `min_per_s` a second), so
an outage cannot turn into a retry storm that doubles the load on the survivors.
"""

from __future__ import annotations

import math
import time

from gateway.config import GatewayConfig, RateLimitConfig


class TokenBucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now


class RateLimiter:
    """Token buckets per (caller identity, service)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        self.limits: dict[str, RateLimitConfig] = dict(config.rate_limits)
        self.max_buckets = config.max_buckets

    def take(self, caller: str, service: str, now: float | None = None) -> int:
        """Takes one token; returns 0 when allowed, else milliseconds until a token."""
        limit = self.limits.get(service)
        if limit is None:
            return 0
        if now is None:
            now = time.monotonic()
        key = (caller, service)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_buckets:
                self._shrink(now)
            bucket = self.buckets[key] = TokenBucket(limit.burst, now)
        else:
            bucket.tokens = min(float(limit.burst),
                                bucket.tokens + (now - bucket.stamp) * limit.rate_per_s)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / limit.rate_per_s * 1000.0))

    def _shrink(self, now: float) -> None:
        full = []
        for key, bucket in self.buckets.items():
            limit = self.limits.get(key[1])
            if limit is None or (bucket.tokens + (now - bucket.stamp) * limit.rate_per_s
                                 >= limit.burst):
                full.append(key)
        for key in full:
            del self.buckets[key]
        if len(self.buckets) >= self.max_buckets:
            oldest = sorted(self.buckets, key=lambda k: self.buckets[k].stamp)
            for key in oldest[: len(oldest) // 2 + 1]:
                del self.buckets[key]


class RetryBudget:
    """Every call deposits `ratio` of a retry; every retry withdraws one. The balance is
    capped, and `min_per_s` retries a second are always allowed."""

    #: The balance never exceeds this many retries.
    CAP = 100.0

    def __init__(self, ratio: float, min_per_s: float) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        # One second's worth to start with, so the first failure after start-up can retry.
        self.balance = min(self.CAP, max(1.0, min_per_s))
        self.stamp = time.monotonic()
        # Calls made since the last withdrawal, each earning `ratio` of a retry.
        self.calls = 0

    def deposit(self) -> None:
        """One call made (the gateway counts `calls` itself on its hot path)."""
        self.calls += 1

    def withdraw(self) -> bool:
        now = time.monotonic()
        earned = self.calls * self.ratio + (now - self.stamp) * self.min_per_s
        self.calls = 0
        self.balance = min(self.CAP, self.balance + earned)
        self.stamp = now
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return False
