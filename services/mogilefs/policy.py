"""Replication policies: `MultipleHosts()`, `MultipleHosts(N)` and `MultipleDevices(N)`.

A policy answers two questions for one file: is it happy with the copies it has, and if not, on
which device should the next copy go. A number in the policy overrides the class mindevcount.

* MultipleHosts is happy when the copies are on `min` distinct hosts, or on every host that can
  hold files and on at least `min` devices. It prefers a device on a host without a copy, and
  falls back to another device on a host that already has one.
* MultipleDevices counts devices only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.mogilefs.devices import Device

_POLICY = re.compile(r"^(MultipleHosts|MultipleDevices)\((\d*)\)$")


@dataclass(frozen=True)
class Policy:
    kind: str
    count: int | None

    def __str__(self) -> str:
        return f"{self.kind}({'' if self.count is None else self.count})"


DEFAULT = Policy("MultipleHosts", None)


def parse(text: str | None) -> Policy:
    """Parses a replpolicy string; ValueError names what is wrong. Empty/None → MultipleHosts()."""
    if not text:
        return DEFAULT
    m = _POLICY.match(text.strip())
    if m is None:
        raise ValueError(f"Failed to load policy {text!r}: unknown policy or bad arguments")
    count = int(m.group(2)) if m.group(2) else None
    if count is not None and count < 1:
        raise ValueError(f"Policy {text!r}: the count must be at least 1")
    return Policy(m.group(1), count)


def wanted(policy: Policy, mindevcount: int) -> int:
    return policy.count if policy.count is not None else mindevcount


def happy(policy: Policy, mindevcount: int, copies: Sequence[Device],
          devices: Sequence[Device]) -> bool:
    """Whether the copies on `copies` satisfy the policy, given every known device."""
    want = wanted(policy, mindevcount)
    live = [d for d in copies if d.status != "dead"]
    if policy.kind == "MultipleDevices":
        return len(live) >= want
    hosts = {d.hostid for d in live}
    all_hosts = {d.hostid for d in devices if d.status != "dead" and d.host_status != "dead"}
    return len(hosts) >= want or (hosts >= all_hosts and len(live) >= want)


def target(policy: Policy, copies: Sequence[Device], candidates: Sequence[Device]) -> Device | None:
    """The device for the next copy among writeable `candidates` (in preference order)."""
    have = {d.devid for d in copies}
    free = [d for d in candidates if d.devid not in have]
    if policy.kind == "MultipleHosts":
        hosts = {d.hostid for d in copies if d.status != "dead"}
        ideal = [d for d in free if d.hostid not in hosts]
        if ideal:
            return ideal[0]
    return free[0] if free else None
