"""A Cache-IDL handler that misbehaves on request, for testing the server core.

`get(key)` answers by the key:

* ``sleep:<seconds>``: sleeps, then answers found with the key as value;
* ``boom``: raises an undeclared exception (RuntimeError);
* ``missing``: raises ServiceError(404);
* ``pid``: the serving process's pid;
* ``wait:<name>`` waits (within its deadline) until a ``set:<name>`` call arrives;
* anything else: found, value = key.

Run as a process: ``python -m tests.core.serve_testapp PORT [PROCESSES] [MAX_INFLIGHT]``.
"""

from __future__ import annotations

import os

import gevent
import gevent.event

import glammp.cache.Cache
from glammp.cache.ttypes import Item
from services.core import errors
from services.core.context import current_call
from services.core.dispatch import Mount


class MisbehavingCache:
    def __init__(self) -> None:
        self.events: dict[str, gevent.event.Event] = {}

    def get(self, key: str, opts: object) -> Item:
        if key.startswith(("wait:", "set:")):
            verb, _, name = key.partition(":")
            event = self.events.setdefault(name, gevent.event.Event())
            if verb == "set":
                event.set()
            else:
                event.wait()
        elif key.startswith("sleep:"):
            gevent.sleep(float(key[6:]))
        elif key == "boom":
            raise RuntimeError("a bug in a handler")
        elif key == "missing":
            raise errors.not_found("no such thing", key=key)
        elif key == "pid":
            return Item(key=key, found=True, value=str(os.getpid()).encode())
        elif key == "whoami":
            ctx = current_call()
            assert ctx is not None
            return Item(key=key, found=True, value=f"{ctx.remaining():.3f}".encode())
        return Item(key=key, found=True, value=key.encode())

    def put_async(self, key: str, value: bytes, opts: object) -> None:
        self.last_async = (key, value)


def mount(handler: object | None = None) -> Mount:
    return Mount(
        "Cache",
        glammp.cache.Cache,
        handler or MisbehavingCache(),
        "cache",
        deadlines_ms={"get": 1000},
        idempotent=frozenset({"get"}),
    )


def main(argv: list[str]) -> int:
    from services.core import logs
    from services.core.runner import ServeSpec, run
    from services.core.server import ServerConfig

    logs.setup("info", json_lines=True)
    port = int(argv[0])
    processes = int(argv[1]) if len(argv) > 1 else 1
    max_inflight = int(argv[2]) if len(argv) > 2 else 1000
    cfg = ServerConfig(port=port, processes=processes, admin_port=-1,
                       max_inflight=max_inflight, drain_grace_ms=5000)
    return run(ServeSpec(cfg, lambda: [mount()],
                         on_ready=lambda t, a: print(f"ready {t[1]}", flush=True)))
