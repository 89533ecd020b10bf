"""Replication policy parsing and decisions (reference D.8), on made-up devices."""

from __future__ import annotations

import pytest

from services.mogilefs import policy
from services.mogilefs.devices import Device, fid_path


def dev(devid: int, hostid: int, status: str = "alive") -> Device:
    return Device(devid=devid, hostid=hostid, status=status, weight=100, mb_total=1000,
                  mb_used=0, host_status="alive", hostname=f"h{hostid}", hostip="127.0.0.1",
                  http_port=7500 + hostid, http_get_port=None, altip=None)


DEVS = [dev(1, 1), dev(2, 1), dev(3, 2), dev(4, 2)]


def test_parse() -> None:
    assert policy.parse(None) == policy.DEFAULT
    assert str(policy.parse("MultipleHosts()")) == "MultipleHosts()"
    assert policy.parse("MultipleHosts(3)").count == 3
    assert policy.parse("MultipleDevices()").kind == "MultipleDevices"
    for bad in ("Bogus()", "MultipleHosts", "MultipleHosts(0)", "Union(MultipleHosts())"):
        with pytest.raises(ValueError):
            policy.parse(bad)


def test_multiple_hosts() -> None:
    p = policy.DEFAULT
    assert not policy.happy(p, 2, [DEVS[0]], DEVS)
    assert not policy.happy(p, 2, [DEVS[0], DEVS[1]], DEVS)
    assert policy.happy(p, 2, [DEVS[0], DEVS[2]], DEVS)
    # Three copies wanted on two hosts: every host and three devices.
    assert not policy.happy(p, 3, [DEVS[0], DEVS[2]], DEVS)
    assert policy.happy(p, 3, [DEVS[0], DEVS[1], DEVS[2]], DEVS)
    assert policy.target(p, [DEVS[0]], DEVS).hostid == 2  # type: ignore[union-attr]
    assert policy.target(p, [DEVS[0], DEVS[2]], [DEVS[1]]) == DEVS[1]
    assert policy.target(p, DEVS, DEVS) is None
    assert policy.happy(policy.parse("MultipleHosts(1)"), 5, [DEVS[0]], DEVS)


def test_multiple_devices() -> None:
    p = policy.parse("MultipleDevices()")
    assert policy.happy(p, 2, [DEVS[0], DEVS[1]], DEVS)
    assert not policy.happy(p, 2, [DEVS[0], dev(9, 1, "dead")], DEVS)
    assert policy.target(p, [DEVS[0]], DEVS) == DEVS[1]


def test_fid_path() -> None:
    assert fid_path(1, 1) == "/dev1/0/000/000/0000000001.fid"
    assert fid_path(2, 148056) == "/dev2/0/000/148/0000148056.fid"
    assert fid_path(3, 12345678901) == "/dev3/1/234/567/12345678901.fid"
