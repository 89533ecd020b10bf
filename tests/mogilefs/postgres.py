"""A throwaway PostgreSQL server for the tracker's PostgreSQL tests.

`PostgresServer` runs Debian's `initdb` and `postgres` (as the `postgres` user when the tests
run as root, since PostgreSQL refuses to run as root) in a private directory, listening on a
free 127.0.0.1 port with trust authentication and fsync off. `available()` says why it cannot
run here (no binaries, no pg8000, no postgres user), for a skip message.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

from services.core.children import Child, free_port, wait_for


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


def available() -> str | None:
    """None when a server can be started, else the reason it cannot."""
    try:
        import pg8000  # noqa: F401
    except ImportError:
        return "pg8000 is not installed"
    if _bindir() is None:
        return "PostgreSQL server binaries are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user"
    return None


class PostgresServer:
    def __init__(self) -> None:
        bindir = _bindir()
        assert bindir is not None
        self.dir = tempfile.mkdtemp(prefix="mogilefs-pg-")
        self.port = free_port()
        prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                      "--init-groups", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run([*prefix, os.path.join(bindir, "initdb"), "-D", data, "-A", "trust",
                        "-U", "postgres", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        self.child = Child("postgres", [*prefix, os.path.join(bindir, "postgres"), "-D", data,
                                        "-p", str(self.port), "-h", "127.0.0.1", "-k",
                                        self.dir, "-F"],
                           "127.0.0.1", self.port, os.path.join(self.dir, "server.log"))

    def start(self) -> PostgresServer:
        """Starts the server and waits until it takes queries (it listens before that)."""
        self.child.start(timeout_s=60)
        wait_for(self._ready, 60, interval_s=0.1, what="postgres accepting queries")
        return self

    def _ready(self) -> bool:
        try:
            self._run("SELECT 1")
        except Exception:  # noqa: BLE001 - "starting up" comes as a DatabaseError
            return False
        return True

    def _run(self, sql: str) -> None:
        import pg8000.native

        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=self.port,
                                        database="postgres")
        try:
            conn.run(sql)
        finally:
            conn.close()

    def new_database(self) -> str:
        """Creates an empty database; returns its `postgresql://` URL."""
        name = f"mog_{uuid.uuid4().hex[:12]}"
        self._run(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
