"""Child processes: local backends started by `glammp serve`, and real backends in tests.

A `Child` runs one command, waits until its TCP port accepts connections (or the process
dies, or a deadline passes), and stops it with SIGTERM then SIGKILL. Tests use `kill9()` and
`start()` again to crash and restart a backend on the same port.

Only loopback addresses are used for readiness checks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: How long a backend may take to accept connections after exec, in seconds.
DEFAULT_START_TIMEOUT_S = 10.0
#: How long a backend may take to exit after SIGTERM before it gets SIGKILL, in seconds.
DEFAULT_STOP_TIMEOUT_S = 5.0


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when its parent dies, so a crashed or
    SIGKILLed glammp never leaves its backends running (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether a TCP connection to (host, port) succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.02,
             what: str = "condition") -> None:
    """Polls `predicate()` until it is true; TimeoutError after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():  # type: ignore[operator]
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout_s:.1f}s")
        time.sleep(interval_s)


class Child:
    """One supervised process listening on `host:port`.

    `argv` is run as is; its stdout and stderr go to `log_path` (or are discarded).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        host: str,
        port: int,
        log_path: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Child:
        """Starts the process and waits until its port accepts; raises if it exits first."""
        if self.running():
            return self
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while not port_accepts(self.host, self.port):
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with {code} before listening on {self.address}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.kill9()
                raise TimeoutError(f"{self.name} did not listen on {self.address} in {timeout_s}s")
            time.sleep(0.01)
        log.info("started %s", self.name, extra={"pid": self.proc.pid, "address": self.address})
        return self

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.wait()

    def kill9(self) -> None:
        """Kills the process with SIGKILL at once (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
