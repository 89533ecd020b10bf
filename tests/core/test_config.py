"""Configuration: typed parsing that names the bad key, and environment overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.core.config import ConfigError, load, parse
from services.core.server import ServerConfig


@dataclass(frozen=True)
class Pool:
    servers: list[str] = field(default_factory=list)
    weight: int = 1


@dataclass(frozen=True)
class Section:
    name: str = "x"
    ratio: float = 1.0
    pools: dict[str, Pool] = field(default_factory=dict)


def test_defaults_and_values():
    assert parse(Section, None, "s") == Section()
    got = parse(Section, {"ratio": 2, "pools": {"a": {"servers": ["h:1"]}}}, "s")
    assert got.ratio == 2.0 and got.pools["a"].servers == ["h:1"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"nmae": "typo"}, "s.nmae"),
        ({"name": 5}, "s.name"),
        ({"pools": {"a": {"servers": ["ok", 7]}}}, "s.pools.a.servers[1]"),
        ({"pools": {"a": {"weight": True}}}, "s.pools.a.weight"),
        ({"pools": []}, "s.pools"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse(Section, raw, "s")
    assert e.value.key == key


def test_validate_names_the_section():
    with pytest.raises(ConfigError) as e:
        parse(ServerConfig, {"port": 70000}, "server")
    assert e.value.key == "server" and "70000" in e.value.reason


def test_file_and_environment(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[server]\nport = 1234\nhost = "127.0.0.2"\n')
    raw = load(str(path), {"GLAMMP__SERVER__PORT": "4321", "GLAMMP__CACHE__POOLS": "[1]",
                           "GLAMMP__SERVER__HOST": "127.0.0.3", "OTHER": "x"})
    assert raw["server"] == {"port": 4321, "host": "127.0.0.3"}
    assert raw["cache"] == {"pools": [1]}


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError):
        load(str(tmp_path / "missing.toml"), {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError) as e:
        load(str(bad), {})
    assert "TOML" in e.value.reason
