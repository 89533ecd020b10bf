"""The mogilefsd / mogstored / mogile-dev subcommands: config parsing and a real start."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import pytest

from services.core.children import Child, free_port, port_accepts, wait_for
from services.core.config import ConfigError
from services.mogilefs import cli
from services.mogilefs.client import TrackerClient


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_tracker_spec_from_file_options_and_flags(tmp_path: Any) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[mogilefsd]\nport = 7101\nmin_free_space_mb = 5\n')
    spec = cli.tracker_spec(parse(["mogilefsd", "--config", str(conf), "--db-path", "x.db",
                                   "--option", "monitor_interval_s=0.5",
                                   "--option", 'admin_clients=["127.0.0.1"]']))
    assert (spec.port, spec.db_path, spec.min_free_space_mb, spec.monitor_interval_s,
            spec.admin_clients, spec.host) == (7101, "x.db", 5, 0.5, ["127.0.0.1"], "127.0.0.1")


def test_global_config_of_the_glammp_cli_is_kept(tmp_path: Any) -> None:
    from services.cli import parser as glammp_parser

    conf = tmp_path / "g.toml"
    conf.write_text('[mogilefsd]\nport = 7102\n')
    args = glammp_parser().parse_args(["--config", str(conf), "mogilefsd"])
    assert cli.tracker_spec(args).port == 7102
    args = glammp_parser().parse_args(["mogilefsd", "--config", str(conf)])
    assert cli.tracker_spec(args).port == 7102


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        cli.tracker_spec(parse(["mogilefsd", "--option", "nosuch=1"]))
    assert e.value.key == "mogilefsd.nosuch"
    with pytest.raises(ConfigError) as e:
        cli.tracker_spec(parse(["mogilefsd", "--option", "monitor_interval_s=0"]))
    assert "monitor_interval_s" in str(e.value)
    with pytest.raises(ConfigError) as e:
        cli.tracker_spec(parse(["mogilefsd", "--option", 'admin_clients=["nonsense"]']))
    assert "admin_clients" in str(e.value)
    with pytest.raises(ConfigError):
        cli.storage_spec(parse(["mogstored", "--device", "0"]))


def test_storage_spec() -> None:
    spec = cli.storage_spec(parse(["mogstored", "--docroot", "/d", "--device", "3",
                                   "--device", "4", "--port", "7600"]))
    assert (spec.docroot, spec.devices, spec.port) == ("/d", [3, 4], 7600)


def test_mogile_dev_runs_and_stops_on_sigterm(tmp_path: Any) -> None:
    port = free_port()
    child = Child("mogile-dev", [sys.executable, "-m", "services.mogilefs", "mogile-dev",
                                 "--data-dir", str(tmp_path / "dev"), "--port", str(port)],
                  "127.0.0.1", port, str(tmp_path / "dev.log"))
    child.start(timeout_s=30)
    try:
        log = tmp_path / "dev.log"
        wait_for(lambda: "mogile-dev: tracker" in log.read_text(), 30, what="dev setup done")
        with TrackerClient("127.0.0.1", port) as c:
            assert c.call("get_domains")["domain1"] == "glammp"
            devices = c.call("get_devices")
            assert [devices[f"dev{i}_observed_state"] for i in range(1, 5)] == ["writeable"] * 4
    finally:
        assert child.stop() == 0
    assert not port_accepts("127.0.0.1", port)


def test_bad_config_exits_nonzero() -> None:
    proc = subprocess.run([sys.executable, "-m", "services.mogilefs", "mogilefsd", "--option",
                           "nosuch=1"], capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert b"mogilefsd.nosuch" in proc.stderr
