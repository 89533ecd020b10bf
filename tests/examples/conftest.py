"""One glammp for every example: `glammp serve` as a real process, its own gearmand, a Python
`glammp worker` serving the `reverse` function the examples call, and a `glammp gateway` in
front of it, which the examples call (and a second, TLS gateway for the TLS tests), as callers
do in production. `GLAMMP_EXAMPLES_FRONT=serve` points them at glammp serve directly.

The examples are built once per session with `make -C examples build` (stubs for every language,
the Java classes, the Go binary, the npm packages); make skips what is up to date in build/.
`GLAMMP_HOST`/`GLAMMP_PORT` point every example at the front port.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import pytest

from glammp.common.ttypes import ServiceError
from services.client import connect
from services.core.children import Child, free_port, wait_for
from services.jobs.local import gearmand_argv
from tests.stubs import JAVA_CLASSPATH

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
BUILD = os.path.join(ROOT, "build", "examples")

#: How each language's example is started (from ROOT), with any extra environment.
COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "php": (["php", "examples/php/example.php"], {}),
    "java": (["java", "-cp", ":".join([os.path.join(BUILD, "java"), *JAVA_CLASSPATH]),
              "GlammpExample"], {}),
    "node": (["node", "examples/node/example.js"],
             {"NODE_PATH": os.path.join(EXAMPLES, "node", "node_modules")}),
    "go": ([os.path.join(BUILD, "go", "glammp-example")], {}),
    "ruby": (["ruby", "examples/ruby/example.rb"], {}),
    "perl": (["perl", "examples/perl/example.pl"], {}),
}
#: What the examples call: "serve" (glammp serve's port) or "gateway" (a gateway in front).
FRONT = os.environ.get("GLAMMP_EXAMPLES_FRONT", "gateway")
#: Seconds for building every example (javac and go build dominate) and for one example's run.
BUILD_TIMEOUT_S = 240
RUN_TIMEOUT_S = 120
#: Seconds for glammp serve (with the dev MogileFS) to announce its port, and for the worker.
SERVE_TIMEOUT_S = 90
WORKER_TIMEOUT_S = 30


@dataclass
class Glammp:
    """The running server as the examples see it."""

    host: str
    port: int
    gearmand: str
    #: What listens on `port`: "the gateway" or "glammp serve".
    via: str
    #: glammp serve's own port (the gateway's upstream).
    serve_port: int
    env: dict[str, str] = field(default_factory=dict)

    def run(self, lang: str, *args: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Runs `lang`'s example with `args` (and `env` added to the environment); returns the
        finished process (text output)."""
        argv, extra = COMMANDS[lang]
        return subprocess.run([*argv, *args], cwd=ROOT, env={**self.env, **extra, **(env or {})},
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)

    def lines(self, lang: str, *args: str) -> list[str]:
        """Runs the example, requires exit code 0, and returns its stdout lines."""
        done = self.run(lang, *args)
        assert done.returncode == 0, f"{lang} example failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout.splitlines()


@pytest.fixture(scope="session")
def examples_built() -> None:
    done = subprocess.run(["make", "-C", EXAMPLES, "build"], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, f"make -C examples build failed:\n{done.stdout}\n{done.stderr}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_announcing(argv: list[str], log_base: str, what: str,
                      procs: list[subprocess.Popen[bytes]], logs: list[IO[str]]) -> None:
    """Starts a glammp process and waits until it prints "listening on"; output goes to
    `log_base`.out/.err. The process and its files are added to `procs` and `logs`."""
    out = open(f"{log_base}.out", "w+")  # noqa: SIM115
    logs.append(out)
    err = open(f"{log_base}.err", "w")  # noqa: SIM115
    logs.append(err)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", *argv], cwd=ROOT,
                            stdout=out, stderr=err)
    procs.append(proc)

    def ready() -> bool:
        out.seek(0)
        return "listening on" in out.read() or proc.poll() is not None

    wait_for(ready, SERVE_TIMEOUT_S, what=f"{what} announcing its port")
    if proc.poll() is not None:
        err.flush()
        with open(f"{log_base}.err") as f:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{f.read()}")


@pytest.fixture(scope="session")
def glammp(examples_built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glammp]:
    tmp = tmp_path_factory.mktemp("examples")
    data = tmp / "data"
    data.mkdir()
    state_db = data / "jobs-state.sqlite"
    gport = free_port()
    gearmand = Child("gearmand", gearmand_argv(gport), "127.0.0.1", gport,
                     str(tmp / "gearmand.log"))
    port, admin = free_port(), free_port()
    # The dev MogileFS is started only where a filestore service exists to use it.
    mogilefs = importlib.util.find_spec("services.filestore.service") is not None
    cfg = tmp / "glammp.toml"
    cfg.write_text(
        f'[server]\nport = {port}\nadmin_port = {admin}\n'
        f'[local]\ndata_dir = "{data}"\ngearmand = false\n'
        f'mogilefs = {"true" if mogilefs else "false"}\n'
        f'[jobs]\nservers = ["{gearmand.address}"]\nstate_db = "{state_db}"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[str]] = []
    try:
        gearmand.start()
        _start_announcing(["--config", str(cfg), "serve"], str(tmp / "serve"), "glammp serve",
                          procs, logs)
        logs.append(open(tmp / "worker.log", "w"))  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--server", gearmand.address,
             "--results-db", str(state_db), "reverse=tests.examples.jobfuncs:reverse"],
            cwd=ROOT, stdout=logs[-1], stderr=subprocess.STDOUT,
        ))

        def worker_registered() -> bool:
            with connect("127.0.0.1", port, "Jobs") as jobs:
                return any(f.name == "reverse" and f.workers > 0 for f in jobs.functions())

        wait_for(worker_registered, WORKER_TIMEOUT_S, interval_s=0.1,
                 what="the worker registering `reverse`")
        front, via = port, "glammp serve"
        if FRONT == "gateway":
            # Callers reach glammp through the gateway, as in production.
            front, via = free_port(), "the gateway"
            upstreams = [f"--upstream={s}=127.0.0.1:{port}" for s in ("Cache", "Filestore", "Jobs")]
            _start_announcing(["gateway", "--port", str(front), "--admin-port", str(free_port()),
                               *upstreams], str(tmp / "gateway"), "glammp gateway", procs, logs)
        env = {**os.environ, "GLAMMP_HOST": "127.0.0.1", "GLAMMP_PORT": str(front)}
        yield Glammp("127.0.0.1", front, gearmand.address, via, port, env)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        gearmand.stop()
        for f in logs:
            f.close()


@pytest.fixture(scope="session")
def glammp_tls(glammp: Glammp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glammp]:
    """A second gateway in front of the same glammp serve, speaking TLS with a certificate for
    127.0.0.1 signed by a test CA; `GLAMMP_TLS_CA` names the CA to the examples."""
    if FRONT != "gateway":
        pytest.skip("TLS is the gateway's: run with GLAMMP_EXAMPLES_FRONT=gateway")
    from tests.gateway.certs import make_ca, make_cert

    tmp = tmp_path_factory.mktemp("examples-tls")
    ca = make_ca(str(tmp))
    cert, key = make_cert(str(tmp), "gateway", server=True)
    port = free_port()
    upstreams = "\n".join(f'{s} = ["127.0.0.1:{glammp.serve_port}"]'
                          for s in ("Cache", "Filestore", "Jobs"))
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nport = {port}\nadmin_port = {free_port()}\n'
        f'[gateway.upstreams]\n{upstreams}\n'
        f'[gateway.tls]\ncertfile = "{cert}"\nkeyfile = "{key}"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[str]] = []
    try:
        _start_announcing(["--config", str(cfg), "gateway"], str(tmp / "gateway"),
                          "glammp gateway (TLS)", procs, logs)
        env = {**glammp.env, "GLAMMP_PORT": str(port), "GLAMMP_TLS_CA": ca}
        yield Glammp(glammp.host, port, glammp.gearmand, "the TLS gateway", glammp.serve_port,
                     env)
    finally:
        for proc in procs:
            _stop(proc)
        for f in logs:
            f.close()


@dataclass(frozen=True)
class ServerFacts:
    """What the running server implements, learned from Python before the examples run."""

    #: The ServiceError Python gets for `Cache.get("bad key")`.
    bad_key: ServiceError


@pytest.fixture(scope="session")
def facts(glammp: Glammp) -> ServerFacts:
    with connect(glammp.host, glammp.port, "Cache") as cache:
        with pytest.raises(ServiceError) as bad:
            cache.get("bad key", None)
    return ServerFacts(bad.value)



