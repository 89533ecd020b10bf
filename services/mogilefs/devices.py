"""The tracker's view of hosts and devices: stored state plus what the monitor observed.

Stored (in `Store`): host status, device status, weight, capacity. Observed (in memory, lost on
restart and refilled by the monitor's first round): `observed_state` (`writeable`, `readable`,
`unreachable`), whether the device rejected a bad Content-MD5, and when usage was last read.

Which device may do what, as MogileFS 2.73 decides it:

==========  ====================================  =========================================
action      device status                         also needs
==========  ====================================  =========================================
read        alive, readonly, drain                host alive/readonly; not unreachable
new file    alive                                 host alive; observed writeable; free space
delete      alive, drain                          host alive; observed writeable
==========  ====================================  =========================================
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.mogilefs.store import Row, Store

HOST_STATES = ("alive", "down", "dead", "readonly")
DEVICE_STATES = ("alive", "dead", "down", "readonly", "drain")


def fid_path(devid: int, fid: int) -> str:
    """`/devN/a/bbb/ccc/nnnnnnnnnn.fid`: directories from the first 10 digits of the padded fid."""
    padded = f"{fid:010d}"
    return f"/dev{devid}/{padded[0]}/{padded[1:4]}/{padded[4:7]}/{padded}.fid"


@dataclass
class Observation:
    """What the monitor last saw of one device."""

    state: str = ""
    reject_bad_md5: bool = False
    utilization: float | None = None


@dataclass
class Device:
    """One device with its host, as of one `Topology.snapshot()`."""

    devid: int
    hostid: int
    status: str
    weight: int
    mb_total: int | None
    mb_used: int | None
    host_status: str
    hostname: str
    hostip: str
    http_port: int
    http_get_port: int | None
    altip: str | None
    observed: Observation = field(default_factory=Observation)

    @property
    def mb_free(self) -> int | None:
        if self.mb_total is None or self.mb_used is None:
            return None
        return self.mb_total - self.mb_used

    def base_url(self, get: bool = False, alt: bool = False) -> str:
        """`http://ip:port`; GETs use the host's get port when set; `alt` uses the altip."""
        ip = self.altip if alt and self.altip else self.hostip
        port = self.http_get_port if get and self.http_get_port else self.http_port
        return f"http://{ip}:{port}"

    def url(self, fid: int, get: bool = False, alt: bool = False) -> str:
        return self.base_url(get, alt) + fid_path(self.devid, fid)

    def readable(self) -> bool:
        return (self.status in ("alive", "readonly", "drain")
                and self.host_status in ("alive", "readonly")
                and self.observed.state != "unreachable")

    def deletable(self) -> bool:
        return (self.status in ("alive", "drain") and self.host_status == "alive"
                and self.observed.state == "writeable")

    def writeable(self, min_free_mb: int, size: int = 0) -> bool:
        free = self.mb_free
        return (self.status == "alive" and self.host_status == "alive"
                and self.observed.state == "writeable"
                and free is not None and free >= min_free_mb
                and (size <= 0 or free * 1024 * 1024 > size))

    def percent_free(self) -> float:
        if not self.mb_total or self.mb_free is None:
            return 0.0
        return self.mb_free / self.mb_total


class Topology:
    """Joins stored hosts/devices with the monitor's observations (kept here, by devid)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.observed: dict[int, Observation] = {}

    def snapshot(self) -> dict[int, Device]:
        """Every device by devid, read fresh from the database."""
        hosts = {h["hostid"]: h for h in self.store.hosts()}
        out: dict[int, Device] = {}
        for d in self.store.devices():
            h = hosts.get(d["hostid"])
            if h is None:
                continue
            out[d["devid"]] = _device(d, h, self.observed.setdefault(d["devid"], Observation()))
        return out

    def writeable(self, min_free_mb: int, size: int = 0,
                  devices: dict[int, Device] | None = None) -> list[Device]:
        """Devices that can take a new file, most free first, weighted-shuffled among the top 20."""
        devs = devices if devices is not None else self.snapshot()
        ok = [d for d in devs.values() if d.writeable(min_free_mb, size)]
        ok.sort(key=lambda d: d.percent_free(), reverse=True)
        return weighted_shuffle(ok[:20], [max(d.percent_free(), 0.0001) for d in ok[:20]])


def weighted_shuffle(items: Sequence[Device], weights: Sequence[float]) -> list[Device]:
    """A random order where heavier items tend to come first (each pick ∝ weight)."""
    pool = list(zip(items, weights, strict=True))
    out: list[Device] = []
    while pool:
        total = sum(w for _, w in pool)
        pick = random.uniform(0, total)
        for i, (item, w) in enumerate(pool):
            pick -= w
            if pick <= 0 or i == len(pool) - 1:
                out.append(item)
                del pool[i]
                break
    return out


def read_order(devices: Sequence[Device]) -> list[Device]:
    """get_paths order: weighted by 102 − utilization% (else weight), drain devices last."""
    def weight(d: Device) -> float:
        if d.observed.utilization is not None:
            return max(102.0 - d.observed.utilization, 0.0001)
        return float(max(d.weight, 0)) or 0.0001

    normal = [d for d in devices if d.status != "drain"]
    drain = [d for d in devices if d.status == "drain"]
    return (weighted_shuffle(normal, [weight(d) for d in normal])
            + weighted_shuffle(drain, [weight(d) for d in drain]))


def _device(d: Row, h: Row, observed: Observation) -> Device:
    return Device(
        devid=d["devid"], hostid=d["hostid"], status=d["status"], weight=d["weight"],
        mb_total=d["mb_total"], mb_used=d["mb_used"], host_status=h["status"],
        hostname=h["hostname"], hostip=h["hostip"], http_port=h["http_port"],
        http_get_port=h["http_get_port"], altip=h["altip"], observed=observed,
    )
