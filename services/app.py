"""Assembling glammp processes from configuration: which services, which local backends.

`glammp serve` (all-in-one) mounts the cache, jobs and filestore services in one process and,
unless the configuration names real backends, starts local ones as supervised child processes
on free loopback ports (`[local]`): a memcached, a gearmand with its SQLite queue (so
acknowledged background jobs survive a gearmand crash), and glammp's MogileFS-compatible
tracker with two storage nodes. `glammp cache|jobs|filestore` serve one service each, against
the backends their section names.

A service whose package is not installed is mounted with no methods, so its calls answer 501.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from services.core.children import Child, free_port
from services.core.config import parse
from services.core.dispatch import Mount

log = logging.getLogger(__name__)

#: Config section -> (package module, multiplexed name, generated module).
SERVICES: dict[str, tuple[str, str, str]] = {
    "cache": ("services.cache.service", "Cache", "glammp.cache.Cache"),
    "jobs": ("services.jobs.service", "Jobs", "glammp.jobs.Jobs"),
    "filestore": ("services.filestore.service", "Filestore", "glammp.filestore.Filestore"),
}

#: Where local backends keep their state (gearmand's queue, MogileFS data), by default.
DEFAULT_DATA_DIR = "build/data"
#: memcached's memory for the local instance, in MiB.
DEFAULT_MEMCACHED_MB = 64
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LocalConfig:
    """The `[local]` section: backends `glammp serve` starts when none are configured."""

    memcached: bool = True
    memcached_memory_mb: int = DEFAULT_MEMCACHED_MB
    gearmand: bool = True
    mogilefs: bool = True
    data_dir: str = DEFAULT_DATA_DIR


def _service_package(section: str) -> ModuleType | None:
    name = SERVICES[section][0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            return None
        raise


class _Unimplemented:
    """A handler with no methods: every call of its service answers 501."""


def parse_section(section: str, raw: dict[str, Any]) -> Any:
    """The typed config of `[section]` (None when that service's package is absent)."""
    package = _service_package(section)
    if package is None:
        return None
    return parse(getattr(package, f"{section.capitalize()}Config"), raw.get(section), section)


def build_mount(section: str, config: Any) -> Mount:
    """Creates the handler of `section` from its parsed config."""
    package = _service_package(section)
    _, mux_name, generated = SERVICES[section]
    if package is None:
        log.warning("the %s service is not available; its calls answer 501", section)
        return Mount(mux_name, importlib.import_module(generated), _Unimplemented(), section)
    return Mount(
        package.SERVICE_NAME,
        package.MODULE,
        package.create(config),
        package.ORIGIN,
        dict(package.DEADLINES_MS),
        frozenset(package.IDEMPOTENT),
    )


def mounts_factory(sections: list[str], raw: dict[str, Any]) -> Callable[[], list[Mount]]:
    """Parses every section now, so a bad value stops start-up before anything is served; the
    handlers are built later, in the process that serves them."""
    configs = {s: parse_section(s, raw) for s in sections}
    return lambda: [build_mount(s, configs[s]) for s in sections]


class LocalBackends:
    """Backends started for the all-in-one process; `stop()` ends them all."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.closers: list[Callable[[], None]] = []

    def start(self, raw: dict[str, Any]) -> None:
        """Starts what the config lacks and writes its addresses into `raw`."""
        os.makedirs(self.config.data_dir, exist_ok=True)
        try:
            self._start(raw)
        except BaseException:
            self.stop()
            raise

    def _start(self, raw: dict[str, Any]) -> None:
        self._start_backends(raw)
        # The cache's read-through (get_or_compute) runs its loaders on the same gearmands.
        servers = raw.get("jobs", {}).get("servers")
        if servers:
            raw.setdefault("cache", {}).setdefault("gearman_servers", list(servers))

    def _start_backends(self, raw: dict[str, Any]) -> None:
        cache = raw.setdefault("cache", {})
        if self.config.memcached and not cache.get("pools"):
            from services.cache.local import memcached_argv

            port = free_port(LOOPBACK)
            child = Child(
                "memcached",
                memcached_argv(port, LOOPBACK, memory_mb=self.config.memcached_memory_mb),
                LOOPBACK,
                port,
                os.path.join(self.config.data_dir, "memcached.log"),
            )
            self.children.append(child.start())
            cache["pools"] = {"default": {"servers": [child.address]}}
            # Frontends' hot get_paths should not reach the tracker: cache paths here too.
            raw.setdefault("filestore", {}).setdefault("path_cache", {"servers": [child.address]})
        jobs = raw.setdefault("jobs", {})
        if self.config.gearmand and not jobs.get("servers"):
            from services.jobs.local import gearmand_argv

            port = free_port(LOOPBACK)
            queue = os.path.join(self.config.data_dir, "gearmand-queue.sqlite")
            child = Child(
                "gearmand",
                gearmand_argv(port, LOOPBACK, queue_db=queue),
                LOOPBACK,
                port,
                os.path.join(self.config.data_dir, "gearmand.log"),
            )
            self.children.append(child.start())
            jobs["servers"] = [child.address]
            jobs.setdefault("state_db", os.path.join(self.config.data_dir, "jobs-state.sqlite"))
        filestore = raw.setdefault("filestore", {})
        if self.config.mogilefs and not filestore.get("trackers"):
            try:
                from services.mogilefs.devcluster import DevCluster
            except ModuleNotFoundError:
                return
            cluster = DevCluster(os.path.join(self.config.data_dir, "mogilefs"))
            cluster.start()
            self.closers.append(cluster.stop)
            filestore["trackers"] = cluster.trackers

    def stop(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.exception("stopping a local backend failed")
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        self.closers.clear()
