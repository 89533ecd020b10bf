"""Typed configuration for the tracker (`[mogilefsd]`) and the storage node (`[mogstored]`).

Units live in the names: `_s` seconds, `_mb` megabytes (MiB), `_bytes` bytes. Every interval
is configurable so tests can run the workers every 0.2 s instead of every few seconds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_TRACKER_PORT = 7001
DEFAULT_STORAGE_PORT = 7500
DEFAULT_MINDEVCOUNT = 2
MIN_FREE_SPACE_MB = 100
MONITOR_INTERVAL_S = 2.5
TEST_WRITE_INTERVAL_S = 15.0
USAGE_STORE_INTERVAL_S = 15.0
REPLICATE_INTERVAL_S = 1.0
DELETE_INTERVAL_S = 1.0
TEMPFILE_MAX_AGE_S = 3600.0
HTTP_TIMEOUT_S = 10.0
#: get_paths' check of its first path: a hung node costs a reader this long, then the next
#: copy is tried.
VERIFY_TIMEOUT_S = 2.0
COPY_TIMEOUT_S = 60.0
#: How long a copy being written is protected from the stray cleaner (crash safety net).
COPY_HOLD_S = 3600.0
MAX_LINE_BYTES = 1024 * 1024
REPLICATE_WORKERS = 4
USAGE_INTERVAL_S = 10.0


def _check_networks(values: list[str], name: str) -> None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{name}: {v!r} is not an address or CIDR network") from None


@dataclass(frozen=True)
class TrackerSpec:
    """The tracker (`glammp mogilefsd`)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_TRACKER_PORT
    #: Metadata database: a SQLite file path, or `postgresql://user[:pw]@host[:port]/db`
    #: (needs the pg8000 package).
    db_path: str = "mogilefs.sqlite3"
    #: SQLite `synchronous`: FULL fsyncs every commit; NORMAL (WAL) survives kill -9 but not
    #: power loss.
    sqlite_synchronous: str = "FULL"
    #: Client addresses/networks allowed to send `!` admin lines and change domains, classes,
    #: hosts, devices and settings. Empty: everyone who can connect.
    admin_clients: list[str] = field(default_factory=list)
    default_mindevcount: int = DEFAULT_MINDEVCOUNT
    min_free_space_mb: int = MIN_FREE_SPACE_MB
    monitor_interval_s: float = MONITOR_INTERVAL_S
    test_write_interval_s: float = TEST_WRITE_INTERVAL_S
    usage_store_interval_s: float = USAGE_STORE_INTERVAL_S
    replicate_interval_s: float = REPLICATE_INTERVAL_S
    delete_interval_s: float = DELETE_INTERVAL_S
    tempfile_max_age_s: float = TEMPFILE_MAX_AGE_S
    #: Multiplies the retry back-off schedule (15 s, 60 s, 5 min, ...); tests use ~0.01.
    retry_scale: float = 1.0
    http_timeout_s: float = HTTP_TIMEOUT_S
    verify_timeout_s: float = VERIFY_TIMEOUT_S
    copy_timeout_s: float = COPY_TIMEOUT_S
    copy_hold_s: float = COPY_HOLD_S
    max_line_bytes: int = MAX_LINE_BYTES
    replicate_workers: int = REPLICATE_WORKERS

    def validate(self) -> None:
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("sqlite_synchronous: must be FULL, NORMAL or EXTRA")
        for name in ("monitor_interval_s", "test_write_interval_s", "replicate_interval_s",
                     "delete_interval_s", "http_timeout_s", "verify_timeout_s", "copy_timeout_s",
                     "retry_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")
        if self.default_mindevcount < 1:
            raise ValueError("default_mindevcount: must be >= 1")
        if self.replicate_workers < 1:
            raise ValueError("replicate_workers: must be >= 1")
        _check_networks(self.admin_clients, "admin_clients")


@dataclass(frozen=True)
class StorageSpec:
    """A storage node (`glammp mogstored`): serves `docroot/devN` over HTTP."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_STORAGE_PORT
    docroot: str = "mogdata"
    #: Device ids whose `devN` directories are created at start; existing ones are served too.
    devices: list[int] = field(default_factory=list)
    usage_interval_s: float = USAGE_INTERVAL_S

    def validate(self) -> None:
        if self.usage_interval_s <= 0:
            raise ValueError("usage_interval_s: must be > 0")
        if any(d < 1 for d in self.devices):
            raise ValueError("devices: ids must be >= 1")
