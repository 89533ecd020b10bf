"""Access rules: which caller may call which method.

A caller is known by its source address and, with mutual TLS, by its certificate's common
name. Rules (`[[gateway.access]]`, see `gateway.config.AccessRule`) are checked in order;
for the first rule whose `callers` match, `deny` then `allow` patterns are tried, and the
first match decides. When no rule decides, admin methods (`admin_methods`: cache flush,
filestore domain/class changes, job cancel) are denied and everything else follows
`default_allow`.

Admin methods are never granted by a wildcard (a rule must name the method, or "admin");
wildcards in `deny` do cover them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config import AccessRule, GatewayConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Caller:
    """Who is calling: the source IP and the TLS identity (common name) if any."""

    ip: str
    identity: str = ""

    @property
    def key(self) -> str:
        """The name rate limits count under: the TLS identity, else the source IP."""
        return f"cn:{self.identity}" if self.identity else self.ip


class _Rule:
    def __init__(self, rule: AccessRule) -> None:
        self.everyone = "*" in rule.callers
        self.names = {c[3:] for c in rule.callers if c.startswith("cn:")}
        self.networks: list[Network] = [
            ipaddress.ip_network(c, strict=False)
            for c in rule.callers if c != "*" and not c.startswith("cn:")
        ]
        self.allow = rule.allow
        self.deny = rule.deny

    def applies(self, caller: Caller) -> bool:
        if self.everyone or (caller.identity and caller.identity in self.names):
            return True
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(caller.ip)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def _matches(patterns: list[str], service: str, method: str, admin: bool,
             wildcards: bool) -> bool:
    full = f"{service}.{method}"
    if full in patterns or (admin and "admin" in patterns):
        return True
    if admin and not wildcards:
        return False
    return f"{service}.*" in patterns or f"*.{method}" in patterns or "*" in patterns


class AccessPolicy:
    def __init__(self, config: GatewayConfig) -> None:
        self.rules = [_Rule(r) for r in config.access]
        self.admin = frozenset(config.admin_methods)
        self.default_allow = config.default_allow
        self._cache: dict[tuple[str, str, str, str], bool] = {}

    def allowed(self, caller: Caller, service: str, method: str) -> bool:
        """Whether `caller` may call service.method (decisions are memoized)."""
        key = (caller.ip, caller.identity, service, method)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decision = self._decide(caller, service, method)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = decision
        return decision

    def for_everyone(self, service: str, method: str) -> bool | None:
        """The decision for service.method when it is the same for every caller (no rules
        name callers), else None."""
        if self.rules:
            return None
        return f"{service}.{method}" not in self.admin and self.default_allow

    def _decide(self, caller: Caller, service: str, method: str) -> bool:
        admin = f"{service}.{method}" in self.admin
        for rule in self.rules:
            if not rule.applies(caller):
                continue
            if _matches(rule.deny, service, method, admin, wildcards=True):
                return False
            if _matches(rule.allow, service, method, admin, wildcards=False):
                return True
        return not admin and self.default_allow
