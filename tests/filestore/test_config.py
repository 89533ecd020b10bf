"""The `[filestore]` section: defaults, a nested path cache pool, and refusals by key."""

from __future__ import annotations

import pytest

from services.core.config import ConfigError, parse
from services.filestore.service import DEFAULT_TRACKERS, FilestoreConfig


def test_defaults_and_a_path_cache_table() -> None:
    assert parse(FilestoreConfig, None, "filestore").trackers == list(DEFAULT_TRACKERS)
    cfg = parse(FilestoreConfig, {
        "trackers": ["10.0.0.1:7001", "10.0.0.2:7001"], "default_domain": "photos",
        "path_cache": {"servers": ["127.0.0.1:11211"], "prefix": "fs:"},
        "path_cache_ttl_s": 60, "verify_reads": True}, "filestore")
    assert cfg.path_cache is not None and cfg.path_cache.servers == ["127.0.0.1:11211"]
    assert (cfg.default_domain, cfg.path_cache_ttl_s, cfg.verify_reads) == ("photos", 60, True)


@pytest.mark.parametrize(("raw", "key"), [
    ({"trackers": ["no-port"]}, "filestore"),
    ({"trackers": []}, "filestore"),
    ({"max_file_bytes": 0}, "filestore"),
    ({"path_cache": {"servers": []}}, "filestore.path_cache"),
    ({"tracker": ["a:1"]}, "filestore.tracker"),
])
def test_wrong_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(FilestoreConfig, raw, "filestore")
    assert e.value.key == key
