"""Config validation, access rules, rate-limit buckets and the retry budget (no sockets)."""

from __future__ import annotations

import pytest

from gateway.access import AccessPolicy, Caller
from gateway.config import AccessRule, GatewayConfig, RateLimitConfig, parse_address
from gateway.limits import RateLimiter, RetryBudget
from services.core.config import ConfigError, parse


def test_config_names_the_bad_key():
    cfg = parse(GatewayConfig, {"upstreams": {"Cache": ["127.0.0.1:9101"]},
                                "rate_limits": {"Cache": {"rate_per_s": 5, "burst": 10}},
                                "access": [{"callers": ["10.0.0.0/8"], "allow": ["admin"]}]},
                "gateway")
    assert cfg.rate_limits["Cache"].burst == 10 and cfg.access[0].allow == ["admin"]
    with pytest.raises(ConfigError, match="upstreams.Cache"):
        parse(GatewayConfig, {"upstreams": {"Cache": ["nohost"]}}, "gateway")
    with pytest.raises(ConfigError, match=r"gateway.access\[0\]"):
        parse(GatewayConfig, {"access": [{"callers": ["not-a-net"]}]}, "gateway")
    with pytest.raises(ConfigError, match="unknown key"):
        parse(GatewayConfig, {"prot": 1}, "gateway")
    assert parse_address("[::1]:80") == ("::1", 80)


def _policy(*rules: AccessRule, default_allow: bool = True) -> AccessPolicy:
    return AccessPolicy(GatewayConfig(access=list(rules), default_allow=default_allow))


def test_admin_methods_need_a_rule_naming_them():
    ops, web = Caller("10.1.2.3"), Caller("192.168.1.5")
    p = _policy(AccessRule(callers=["10.0.0.0/8"], allow=["*"]))
    assert p.allowed(ops, "Cache", "get") and p.allowed(web, "Cache", "get")
    assert not p.allowed(ops, "Cache", "flush")  # a wildcard does not grant an admin method
    p = _policy(AccessRule(callers=["10.0.0.0/8"], allow=["admin"]),
                AccessRule(callers=["cn:deployer"], allow=["Jobs.cancel"]))
    assert p.allowed(ops, "Cache", "flush") and p.allowed(ops, "Filestore", "delete_domain")
    assert not p.allowed(web, "Cache", "flush")
    assert p.allowed(Caller("192.168.1.5", "deployer"), "Jobs", "cancel")
    assert not p.allowed(Caller("192.168.1.5", "deployer"), "Cache", "flush")


def test_first_deciding_rule_wins_and_default_applies():
    p = _policy(AccessRule(callers=["192.168.0.0/16"], deny=["Cache.*"]),
                AccessRule(callers=["*"], allow=["Cache.get"]), default_allow=False)
    lan = Caller("192.168.3.4")
    assert not p.allowed(lan, "Cache", "get")
    assert p.allowed(Caller("10.0.0.1"), "Cache", "get")
    assert not p.allowed(Caller("10.0.0.1"), "Cache", "put")  # default_allow = false
    assert not p.allowed(Caller("not-an-ip"), "Jobs", "submit")


def test_rate_limiter_token_bucket():
    cfg = GatewayConfig(rate_limits={"Cache": RateLimitConfig(rate_per_s=10, burst=2)},
                        max_buckets=4)
    rl = RateLimiter(cfg)
    assert [rl.take("a", "Cache", now=100.0) for _ in range(3)][:2] == [0, 0]
    assert rl.take("a", "Cache", now=100.0) == 100  # one token per 100 ms
    assert rl.take("a", "Cache", now=100.2) == 0
    assert rl.take("a", "Jobs", now=100.2) == 0  # no limit configured
    for i in range(10):  # more callers than buckets: memory stays bounded
        rl.take(f"c{i}", "Cache", now=200.0 + i)
    assert len(rl.buckets) <= 4


def test_retry_budget_is_bounded():
    b = RetryBudget(ratio=0.5, min_per_s=0.0)
    assert b.withdraw()  # the start-up allowance
    assert not b.withdraw()
    b.deposit()
    b.deposit()
    assert b.withdraw() and not b.withdraw()
