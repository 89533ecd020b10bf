"""A local memcached for the all-in-one `glammp serve` and for tests.

`memcached_argv` builds the command line of Debian's memcached listening on one loopback port
(UDP off); `start_local_memcached` runs it as a supervised `Child` and waits until it accepts
connections.
"""

from __future__ import annotations

import os
import shutil

from services.core.children import Child

#: Memory for items, MB (memcached's own default is 64).
DEFAULT_MEMORY_MB = 64
#: Where Debian installs memcached.
MEMCACHED_BINARY = "memcached"


def memcached_argv(
    port: int,
    host: str = "127.0.0.1",
    item_size: str | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    binary: str = MEMCACHED_BINARY,
) -> list[str]:
    """The command line of one memcached on `host:port`. `item_size` is memcached's ``-I``
    (e.g. ``"5m"``; default 1 MB). memcached refuses to run as root without ``-u``, so the
    user is given when we are root: root itself, because switching to another user would
    clear the parent-death signal (`services.core.children`) and a SIGKILLed glammp would
    leave this memcached running. It listens on `host` only (loopback by default)."""
    argv = [shutil.which(binary) or binary, "-l", host, "-p", str(port), "-U", "0",
            "-m", str(memory_mb)]
    if item_size:
        argv += ["-I", item_size]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += ["-u", "root"]
    return argv


def start_local_memcached(
    port: int,
    host: str = "127.0.0.1",
    item_size: str | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    log_path: str | None = None,
) -> Child:
    """Starts memcached and returns the running Child (stop it with `.stop()`)."""
    child = Child(
        f"memcached:{port}",
        memcached_argv(port, host, item_size, memory_mb),
        host,
        port,
        log_path=log_path,
    )
    return child.start()
