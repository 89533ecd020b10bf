"""The two SQL databases the tracker can keep its metadata in: SQLite (default) and PostgreSQL.

`Store` writes one SQL dialect, the common part of both: `?` placeholders, `INSERT … ON
CONFLICT … DO UPDATE/NOTHING`, `RETURNING`. A `Database` runs it on one connection and hides
what differs: table types, how a transaction begins, how a unique violation looks, and the
case-insensitive prefix test.

* SQLite: WAL journal; `synchronous` FULL (every commit fsynced) or NORMAL (survives a kill -9
  of the tracker, not a power cut). Calls never yield to the gevent hub.
* PostgreSQL through pg8000 (pure Python, so its socket I/O is cooperative under gevent). Calls
  yield, so `Store` holds a lock around each transaction and query.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit


class Row(Protocol):
    """A result row: by position or by column name (sqlite3.Row and PgRow both are)."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class UniqueViolation(Exception):
    """A UNIQUE or PRIMARY KEY constraint refused a write."""


class Database(Protocol):
    #: SQL that is true when the first `len(prefix)` bytes of dkey equal the prefix parameter,
    #: ignoring ASCII case; its placeholders are (len, prefix).
    ci_prefix: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


def schema(blob: str, bigint: str, serial: str) -> list[str]:
    """The MogileFS tables (plus stray_copy), as CREATE statements for one database."""
    return [
        "CREATE TABLE IF NOT EXISTS domain (dmid INTEGER PRIMARY KEY, "
        "namespace TEXT NOT NULL UNIQUE)",
        "CREATE TABLE IF NOT EXISTS class (dmid INTEGER NOT NULL, classid INTEGER NOT NULL, "
        "classname TEXT NOT NULL, mindevcount INTEGER NOT NULL, replpolicy TEXT, "
        "hashtype INTEGER, PRIMARY KEY (dmid, classid), UNIQUE (dmid, classname))",
        # MogileFS makes hostip alone unique; (ip, port) lets several nodes share 127.0.0.1.
        "CREATE TABLE IF NOT EXISTS host (hostid INTEGER PRIMARY KEY, status TEXT NOT NULL, "
        "http_port INTEGER, http_get_port INTEGER, hostname TEXT NOT NULL UNIQUE, "
        "hostip TEXT, altip TEXT, altmask TEXT, UNIQUE (hostip, http_port))",
        "CREATE TABLE IF NOT EXISTS device (devid INTEGER PRIMARY KEY, "
        "hostid INTEGER NOT NULL, status TEXT NOT NULL, weight INTEGER NOT NULL DEFAULT 100, "
        f"mb_total {bigint}, mb_used {bigint}, mb_asof {bigint})",
        f"CREATE TABLE IF NOT EXISTS tempfile (fid {serial}, createtime {bigint} NOT NULL, "
        f"classid INTEGER, dmid INTEGER NOT NULL, dkey {blob}, devids TEXT)",
        f"CREATE TABLE IF NOT EXISTS file (fid {bigint} PRIMARY KEY, dmid INTEGER NOT NULL, "
        f"dkey {blob} NOT NULL, length {bigint}, classid INTEGER NOT NULL, "
        "devcount INTEGER NOT NULL, UNIQUE (dmid, dkey))",
        f"CREATE TABLE IF NOT EXISTS file_on (fid {bigint} NOT NULL, devid INTEGER NOT NULL, "
        "PRIMARY KEY (fid, devid))",
        "CREATE INDEX IF NOT EXISTS file_on_devid ON file_on (devid, fid)",
        f"CREATE TABLE IF NOT EXISTS file_to_replicate (fid {bigint} PRIMARY KEY, "
        f"nexttry {bigint} NOT NULL, fromdevid INTEGER, failcount INTEGER NOT NULL DEFAULT 0, "
        "flags INTEGER NOT NULL DEFAULT 0)",
        f"CREATE TABLE IF NOT EXISTS file_to_delete2 (fid {bigint} PRIMARY KEY, "
        f"nexttry {bigint} NOT NULL, failcount INTEGER NOT NULL DEFAULT 0)",
        f"CREATE TABLE IF NOT EXISTS checksum (fid {bigint} PRIMARY KEY, "
        f"hashtype INTEGER NOT NULL, checksum {blob} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS server_settings (field TEXT PRIMARY KEY, value TEXT)",
        # A copy that may exist on a device without a file_on row: an upload the client never
        # closed, the unused destinations of a multi_dest upload, or a replication copy in
        # flight. The cleaner deletes it from the device unless file_on claims it by then.
        f"CREATE TABLE IF NOT EXISTS stray_copy (fid {bigint} NOT NULL, "
        f"devid INTEGER NOT NULL, nexttry {bigint} NOT NULL, "
        "failcount INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (fid, devid))",
    ]


class SqliteDatabase:
    ci_prefix = "lower(CAST(substr(dkey, 1, ?) AS TEXT)) = lower(CAST(? AS TEXT))"

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                    timeout=10.0)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        for ddl in schema("BLOB", "INTEGER", "INTEGER PRIMARY KEY AUTOINCREMENT"):
            self.conn.execute(ddl)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self.conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as e:
            raise UniqueViolation(str(e)) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.IntegrityError as e:
            raise UniqueViolation(str(e)) from None

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class PgRow(tuple):  # type: ignore[type-arg]
    """A PostgreSQL row that also answers by column name."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


class _PgCursor:
    def __init__(self, cur: Any) -> None:
        self.rowcount = int(cur.rowcount)
        names = tuple(d[0] for d in cur.description or ())
        self._rows = []
        if cur.description:
            for values in cur.fetchall():
                row = PgRow(values)
                row.names = names
                self._rows.append(row)

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


_PLACEHOLDER = re.compile(r"\?")
#: SQLSTATE of a unique violation.
_UNIQUE = "23505"


class PostgresDatabase:
    """`url` is `postgresql://user[:password]@host[:port]/database`."""

    ci_prefix = ("lower(convert_from(substr(dkey, 1, ?), 'LATIN1')) = "
                 "lower(convert_from(?, 'LATIN1'))")

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        import pg8000.dbapi

        self._dbapi = pg8000.dbapi
        self._url = url
        self._timeout_s = timeout_s
        self.conn: Any = None
        for ddl in schema("BYTEA", "BIGINT", "BIGSERIAL PRIMARY KEY"):
            self.execute(ddl)

    def _connect(self) -> Any:
        parts = urlsplit(self._url)
        conn = self._dbapi.connect(
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
            database=unquote(parts.path.lstrip("/")) or None, timeout=self._timeout_s)
        conn.autocommit = True
        return conn

    def _run(self, sql: str, params: Sequence[Any], many: bool = False) -> Any:
        if self.conn is None:
            self.conn = self._connect()
        cur = self.conn.cursor()
        try:
            if many:
                cur.executemany(_PLACEHOLDER.sub("%s", sql), params)
            else:
                cur.execute(_PLACEHOLDER.sub("%s", sql), tuple(params))
            return _PgCursor(cur)
        except self._dbapi.DatabaseError as e:
            # The server answered with an error: the connection is still in step, unless the
            # error ended the session.
            info = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
            if info.get("S") in ("FATAL", "PANIC"):
                self._drop()  # the server ended this session (restart, terminate_backend)
            if info.get("C") == _UNIQUE:
                raise UniqueViolation(str(info.get("M", e))) from None
            raise
        except BaseException:
            # Interrupted mid-exchange (network error, timeout, greenlet kill): we don't know
            # where the protocol stands, so this connection is dropped and the next call
            # opens a new one; an open transaction is lost with it (the server rolls back).
            self._drop()
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        result: Cursor = self._run(sql, params)
        return result

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run(sql, rows, many=True)

    def begin(self) -> None:
        self.execute("BEGIN")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        self._drop()


def open_database(url_or_path: str, synchronous: str = "FULL") -> Database:
    """PostgreSQL for a `postgresql://` URL, else SQLite at that file path."""
    if url_or_path.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url_or_path)
    return SqliteDatabase(url_or_path, synchronous)
