"""Which device may do what (devices.py table), URLs and read order, on made-up devices."""

from __future__ import annotations

from services.mogilefs.devices import Device, Observation, read_order
from services.mogilefs.namespace import _in_mask


def dev(devid: int = 1, status: str = "alive", host_status: str = "alive",
        observed: str = "writeable", used: int = 0, weight: int = 100) -> Device:
    return Device(devid=devid, hostid=1, status=status, weight=weight, mb_total=1000,
                  mb_used=used, host_status=host_status, hostname="h", hostip="10.0.0.1",
                  http_port=7500, http_get_port=7600, altip="192.168.0.1",
                  observed=Observation(state=observed))


def test_urls() -> None:
    d = dev(7)
    assert d.url(1) == "http://10.0.0.1:7500/dev7/0/000/000/0000000001.fid"
    assert d.url(1, get=True) == "http://10.0.0.1:7600/dev7/0/000/000/0000000001.fid"
    assert d.url(1, get=True, alt=True).startswith("http://192.168.0.1:7600/")


def test_read_rules() -> None:
    assert dev().readable() and dev(status="readonly").readable()
    assert dev(status="drain").readable()
    assert not dev(status="down").readable() and not dev(status="dead").readable()
    assert dev(host_status="readonly").readable()
    assert not dev(host_status="down").readable()
    assert not dev(observed="unreachable").readable()


def test_write_rules() -> None:
    assert dev().writeable(100)
    assert not dev(status="readonly").writeable(100)
    assert not dev(status="drain").writeable(100)
    assert not dev(host_status="readonly").writeable(100)
    assert not dev(observed="readable").writeable(100)
    assert not dev(observed="").writeable(100)
    assert not dev(used=950).writeable(100)
    assert dev(used=500).writeable(100, size=400 * 1024 * 1024)
    assert not dev(used=500).writeable(100, size=500 * 1024 * 1024)


def test_delete_rules() -> None:
    assert dev().deletable() and dev(status="drain").deletable()
    assert not dev(status="readonly").deletable()
    assert not dev(observed="readable").deletable()


def test_drain_goes_last_and_weight_zero_still_listed() -> None:
    devices = [dev(1, status="drain"), dev(2, weight=0), dev(3)]
    for _ in range(20):
        order = [d.devid for d in read_order(devices)]
        assert order[-1] == 1 and sorted(order) == [1, 2, 3]


def test_alt_mask_matches_client_network() -> None:
    host = {"altip": "192.168.0.1", "altmask": "172.16.0.0/12"}
    assert _in_mask("172.20.1.2", dev(), host)  # type: ignore[arg-type]
    assert not _in_mask("127.0.0.1", dev(), host)  # type: ignore[arg-type]
    assert not _in_mask("172.20.1.2", dev(), {"altip": None, "altmask": None})  # type: ignore[arg-type]
