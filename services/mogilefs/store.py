"""Tracker metadata: the MogileFS schema and every query the tracker runs.

Backends (`database.py`): SQLite by default, PostgreSQL for a `postgresql://` URL. Durability:
each public method is one transaction, committed before it returns, and the tracker replies
only after that; with SQLite's default `synchronous=FULL` (or NORMAL in WAL mode) a kill -9 of
the tracker never loses an acknowledged change.

Concurrency: one connection per `Store`, shared by the greenlets of one process. A lock is
held around every transaction and query, because PostgreSQL calls yield to the gevent hub
(SQLite calls never do, so there it is never contended). Methods never do other I/O inside a
transaction. A second tracker process on the same database is not supported: fid locks are
in memory.

Keys (`dkey`) are stored as BLOB/BYTEA: arbitrary bytes, ordered bytewise (memcmp), as
MogileFS on SQLite orders them. `Duplicate` is raised when a unique name or id is taken.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gevent.lock

from services.mogilefs.database import Database, Row, UniqueViolation, open_database

__all__ = ["HASHNAMES", "HASHTYPES", "NEVER", "Duplicate", "NoTempfile", "Row", "Store"]

#: `nexttry` value for a replication that can never succeed (no copy left): the end of time.
NEVER = 2147483647
#: LIMIT standing for "no limit" (a negative list_keys limit), valid in both databases.
NO_LIMIT = 2**62

#: MogileFS stores hash types as small integers.
HASHTYPES = {"MD5": 1, "SHA-1": 2}
HASHNAMES = {v: k for k, v in HASHTYPES.items()}

_QUEUE_REPLICATION = ("INSERT INTO file_to_replicate (fid, nexttry) VALUES (?, 0) "
                      "ON CONFLICT (fid) DO UPDATE SET nexttry = 0, failcount = 0")
_QUEUE_DELETION = ("INSERT INTO file_to_delete2 (fid, nexttry, failcount) VALUES (?, 0, 0) "
                   "ON CONFLICT (fid) DO UPDATE SET nexttry = 0, failcount = 0")
_ADD_FILE_ON = "INSERT INTO file_on (fid, devid) VALUES (?, ?) ON CONFLICT DO NOTHING"


class Duplicate(Exception):
    """A unique name or id is already used (the tracker answers `ERR dup`)."""


class NoTempfile(Exception):
    """The upload's tempfile row is gone: already closed, failed, or swept."""


class Store:
    """The metadata database: a SQLite file path or a `postgresql://` URL."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.db: Database = open_database(path, synchronous)
        self._lock = gevent.lock.RLock()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Database]:
        """One write transaction; a unique violation inside becomes `Duplicate`."""
        with self._lock:
            self.db.begin()
            try:
                yield self.db
            except UniqueViolation as e:
                self.db.rollback()
                raise Duplicate(str(e)) from None
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    def one(self, sql: str, *params: Any) -> Row | None:
        with self._lock:
            row: Row | None = self.db.execute(sql, params).fetchone()
            return row

    def all(self, sql: str, *params: Any) -> list[Row]:
        with self._lock:
            return list(self.db.execute(sql, params).fetchall())

    # -- domains and classes ---------------------------------------------------------------

    def domain_id(self, name: str) -> int | None:
        if not _storable(name):
            return None
        row = self.one("SELECT dmid FROM domain WHERE namespace = ?", name)
        return int(row[0]) if row else None

    def domains(self) -> list[Row]:
        return self.all("SELECT dmid, namespace FROM domain ORDER BY dmid")

    def create_domain(self, name: str) -> int:
        with self.tx() as db:
            row = db.execute("SELECT COALESCE(MAX(dmid), 0) + 1 FROM domain").fetchone()
            db.execute("INSERT INTO domain (dmid, namespace) VALUES (?, ?)", (row[0], name))
            return int(row[0])

    def delete_domain(self, dmid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM class WHERE dmid = ?", (dmid,))
            db.execute("DELETE FROM domain WHERE dmid = ?", (dmid,))

    def domain_has_files(self, dmid: int) -> bool:
        return self.one("SELECT 1 FROM file WHERE dmid = ? LIMIT 1", dmid) is not None

    def classes(self, dmid: int) -> list[Row]:
        return self.all("SELECT * FROM class WHERE dmid = ? ORDER BY classid", dmid)

    def class_by_name(self, dmid: int, name: str) -> Row | None:
        if not _storable(name):
            return None
        return self.one("SELECT * FROM class WHERE dmid = ? AND classname = ?", dmid, name)

    def class_by_id(self, dmid: int, classid: int) -> Row | None:
        return self.one("SELECT * FROM class WHERE dmid = ? AND classid = ?", dmid, classid)

    def save_class(self, dmid: int, name: str, mindevcount: int, replpolicy: str | None,
                   hashtype: int | None, update: bool) -> int:
        """Creates (update=False) or updates the class; returns its classid.

        `replpolicy`/`hashtype` None on update leaves them as they are. `default` gets id 0.
        """
        with self.tx() as db:
            row = db.execute("SELECT classid FROM class WHERE dmid = ? AND classname = ?",
                             (dmid, name)).fetchone()
            if row is not None and update:
                db.execute("UPDATE class SET mindevcount = ? WHERE dmid = ? AND classid = ?",
                           (mindevcount, dmid, row[0]))
                if replpolicy is not None:
                    db.execute("UPDATE class SET replpolicy = ? WHERE dmid = ? AND classid = ?",
                               (replpolicy, dmid, row[0]))
                if hashtype is not None:
                    db.execute("UPDATE class SET hashtype = ? WHERE dmid = ? AND classid = ?",
                               (hashtype, dmid, row[0]))
                return int(row[0])
            if name == "default":
                classid = 0
            else:
                classid = int(db.execute(
                    "SELECT COALESCE(MAX(classid), 0) + 1 FROM class WHERE dmid = ?", (dmid,)
                ).fetchone()[0])
            db.execute("INSERT INTO class (dmid, classid, classname, mindevcount, replpolicy, "
                       "hashtype) VALUES (?, ?, ?, ?, ?, ?)",
                       (dmid, classid, name, mindevcount, replpolicy, hashtype))
            return classid

    def delete_class(self, dmid: int, classid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM class WHERE dmid = ? AND classid = ?", (dmid, classid))

    def class_has_files(self, dmid: int, classid: int) -> bool:
        return self.one("SELECT 1 FROM file WHERE dmid = ? AND classid = ? LIMIT 1",
                        dmid, classid) is not None

    # -- hosts and devices -----------------------------------------------------------------

    def hosts(self) -> list[Row]:
        return self.all("SELECT * FROM host ORDER BY hostid")

    def host(self, hostid: int) -> Row | None:
        return self.one("SELECT * FROM host WHERE hostid = ?", hostid)

    def host_by_name(self, name: str) -> Row | None:
        if not _storable(name):
            return None
        return self.one("SELECT * FROM host WHERE hostname = ?", name)

    def create_host(self, fields: dict[str, Any]) -> int:
        with self.tx() as db:
            hostid = int(db.execute("SELECT COALESCE(MAX(hostid), 0) + 1 FROM host").fetchone()[0])
            cols = ["hostid", *fields]
            db.execute(f"INSERT INTO host ({', '.join(cols)}) VALUES "
                       f"({', '.join('?' * len(cols))})", (hostid, *fields.values()))
            return hostid

    def update_host(self, hostid: int, fields: dict[str, Any]) -> None:
        if not fields:
            return
        with self.tx() as db:
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE host SET {sets} WHERE hostid = ?", (*fields.values(), hostid))

    def delete_host(self, hostid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM host WHERE hostid = ?", (hostid,))

    def devices(self) -> list[Row]:
        return self.all("SELECT * FROM device ORDER BY devid")

    def device(self, devid: int) -> Row | None:
        return self.one("SELECT * FROM device WHERE devid = ?", devid)

    def create_device(self, devid: int, hostid: int, status: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO device (devid, hostid, status) VALUES (?, ?, ?)",
                       (devid, hostid, status))

    def update_device(self, devid: int, **fields: Any) -> None:
        with self.tx() as db:
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE device SET {sets} WHERE devid = ?", (*fields.values(), devid))

    # -- the two-phase create --------------------------------------------------------------

    def create_tempfile(self, dmid: int, key: bytes, classid: int, devids: Sequence[int],
                        fid: int | None = None) -> int | None:
        """Records an upload in progress; returns its fid, or None if `fid` is already used."""
        devlist = ",".join(map(str, devids))
        with self.tx() as db:
            if fid:
                used = db.execute("SELECT 1 FROM file WHERE fid = ? UNION ALL "
                                  "SELECT 1 FROM tempfile WHERE fid = ?", (fid, fid)).fetchone()
                if used:
                    return None
                db.execute("INSERT INTO tempfile (fid, createtime, classid, dmid, dkey, devids) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (fid, int(time.time()), classid, dmid, key, devlist))
                return fid
            while True:
                # An explicit fid may sit ahead of the sequence, as a tempfile or a file: the
                # insert then conflicts (no row back) or lands on a file's fid; skip past it.
                row = db.execute("INSERT INTO tempfile (createtime, classid, dmid, dkey, devids) "
                                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING fid",
                                 (int(time.time()), classid, dmid, key, devlist)).fetchone()
                if row is None:
                    continue
                new = int(row[0])
                if db.execute("SELECT 1 FROM file WHERE fid = ?", (new,)).fetchone() is None:
                    return new
                db.execute("DELETE FROM tempfile WHERE fid = ?", (new,))

    def tempfile(self, fid: int) -> Row | None:
        return self.one("SELECT * FROM tempfile WHERE fid = ?", fid)

    def _strays(self, db: Database, fid: int, devids: Sequence[int], nexttry: int) -> None:
        db.executemany("INSERT INTO stray_copy (fid, devid, nexttry) VALUES (?, ?, ?) "
                       "ON CONFLICT (fid, devid) DO UPDATE SET nexttry = excluded.nexttry, "
                       "failcount = 0", [(fid, d, nexttry) for d in devids])

    def abandon_upload(self, fid: int, devid: int) -> None:
        """A close that failed or had no key: the tempfile row is consumed, and the copies on
        its devices and on `devid` become strays (deleted unless `file_on` claims them)."""
        with self.tx() as db:
            row = db.execute("SELECT devids FROM tempfile WHERE fid = ?", (fid,)).fetchone()
            db.execute("DELETE FROM tempfile WHERE fid = ?", (fid,))
            devids = set(_devids(row[0])) if row else set()
            self._strays(db, fid, sorted(devids | {devid}), 0)

    def close_file(self, fid: int, dmid: int, key: bytes, length: int, devid: int,
                   checksum: tuple[int, bytes] | None) -> int | None:
        """Consumes the tempfile row and makes the upload visible under `key`.

        Returns the replaced fid, if any (it is queued for deletion); the new fid is queued for
        replication at once, and the copies on the other chosen devices become strays.
        Raises `NoTempfile` when the row is gone (closed, failed or swept meanwhile).
        """
        with self.tx() as db:
            temp = db.execute("SELECT classid, devids FROM tempfile WHERE fid = ?",
                              (fid,)).fetchone()
            if temp is None:
                raise NoTempfile(fid)
            db.execute("DELETE FROM tempfile WHERE fid = ?", (fid,))
            self._strays(db, fid, [d for d in _devids(temp[1]) if d != devid], 0)
            old = db.execute("SELECT fid FROM file WHERE dmid = ? AND dkey = ?",
                             (dmid, key)).fetchone()
            if old is not None:
                db.execute("DELETE FROM file WHERE fid = ?", (old[0],))
                db.execute(_QUEUE_DELETION, (old[0],))
            db.execute("INSERT INTO file (fid, dmid, dkey, length, classid, devcount) "
                       "VALUES (?, ?, ?, ?, ?, 1)", (fid, dmid, key, length, temp[0]))
            db.execute(_ADD_FILE_ON, (fid, devid))
            if checksum is not None:
                db.execute("INSERT INTO checksum (fid, hashtype, checksum) VALUES (?, ?, ?) "
                           "ON CONFLICT (fid) DO UPDATE SET hashtype = excluded.hashtype, "
                           "checksum = excluded.checksum", (fid, *checksum))
            db.execute(_QUEUE_REPLICATION, (fid,))
            return int(old[0]) if old is not None else None

    def sweep_tempfiles(self, older_than: float) -> int:
        """Abandons uploads created before `older_than` (unix s); their copies become strays."""
        with self.tx() as db:
            rows = db.execute("SELECT fid, devids FROM tempfile WHERE createtime < ?",
                              (int(older_than),)).fetchall()
            for row in rows:
                db.execute("DELETE FROM tempfile WHERE fid = ?", (row[0],))
                self._strays(db, row[0], _devids(row[1]), 0)
            return len(rows)

    # -- the namespace ---------------------------------------------------------------------

    def file_by_key(self, dmid: int, key: bytes) -> Row | None:
        return self.one("SELECT * FROM file WHERE dmid = ? AND dkey = ?", dmid, key)

    def file(self, fid: int) -> Row | None:
        return self.one("SELECT * FROM file WHERE fid = ?", fid)

    def file_devids(self, fid: int) -> list[int]:
        return [r[0] for r in self.all("SELECT devid FROM file_on WHERE fid = ? ORDER BY devid",
                                       fid)]

    def checksum(self, fid: int) -> tuple[int, bytes] | None:
        row = self.one("SELECT hashtype, checksum FROM checksum WHERE fid = ?", fid)
        return (int(row[0]), bytes(row[1])) if row else None

    def delete_file(self, fid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM file WHERE fid = ?", (fid,))
            db.execute(_QUEUE_DELETION, (fid,))

    def rename(self, fid: int, to_key: bytes) -> None:
        with self.tx() as db:
            db.execute("UPDATE file SET dkey = ? WHERE fid = ?", (to_key, fid))

    def update_file_class(self, fid: int, classid: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE file SET classid = ? WHERE fid = ?", (classid, fid))
            db.execute(_QUEUE_REPLICATION, (fid,))

    def list_keys(self, dmid: int, prefix: bytes, after: bytes, limit: int,
                  case_sensitive: bool) -> list[bytes]:
        """Keys starting with `prefix` (ASCII case-insensitive unless asked), > `after`, sorted.

        A negative `limit` means no limit."""
        match = "substr(dkey, 1, ?) = ?" if case_sensitive else self.db.ci_prefix
        rows = self.all(f"SELECT dkey FROM file WHERE dmid = ? AND dkey > ? AND {match} "
                        "ORDER BY dkey LIMIT ?", dmid, after, len(prefix), prefix,
                        NO_LIMIT if limit < 0 else limit)
        return [bytes(r[0]) for r in rows]

    def list_fids(self, after: int, count: int) -> list[Row]:
        return self.all("SELECT f.*, d.namespace FROM file f JOIN domain d USING (dmid) "
                        "WHERE fid > ? ORDER BY fid LIMIT ?", after, count)

    # -- replication -----------------------------------------------------------------------

    def replication(self, fid: int) -> Row | None:
        return self.one("SELECT * FROM file_to_replicate WHERE fid = ?", fid)

    def due_replications(self, now: float, limit: int) -> list[Row]:
        return self.all("SELECT * FROM file_to_replicate WHERE nexttry <= ? ORDER BY nexttry "
                        "LIMIT ?", int(now), limit)

    def replicate_now(self) -> int:
        with self.tx() as db:
            return int(db.execute("UPDATE file_to_replicate SET nexttry = 0 "
                                  "WHERE nexttry > 0 AND nexttry < ?", (NEVER,)).rowcount)

    def queue_replication(self, fids: Sequence[int]) -> None:
        with self.tx() as db:
            db.executemany(_QUEUE_REPLICATION, [(f,) for f in fids])

    def retry_replication(self, fid: int, nexttry: float) -> None:
        with self.tx() as db:
            db.execute("UPDATE file_to_replicate SET nexttry = ?, failcount = failcount + 1 "
                       "WHERE fid = ?", (int(nexttry), fid))

    def replication_done(self, fid: int, devcount: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM file_to_replicate WHERE fid = ?", (fid,))
            db.execute("UPDATE file SET devcount = ? WHERE fid = ?", (devcount, fid))

    def release_stray(self, fid: int, devid: int) -> None:
        """A copy in flight failed: it may be deleted now."""
        with self.tx() as db:
            self._strays(db, fid, [devid], 0)

    def begin_copy(self, fid: int, devid: int, safety_s: float) -> None:
        """Records a copy about to be written, so a crash mid-copy leaves a stray, not an orphan."""
        with self.tx() as db:
            self._strays(db, fid, [devid], int(time.time() + safety_s))

    def add_copy(self, fid: int, devid: int, checksum: tuple[int, bytes] | None) -> None:
        with self.tx() as db:
            db.execute(_ADD_FILE_ON, (fid, devid))
            db.execute("DELETE FROM stray_copy WHERE fid = ? AND devid = ?", (fid, devid))
            if checksum is not None:
                db.execute("INSERT INTO checksum (fid, hashtype, checksum) VALUES (?, ?, ?) "
                           "ON CONFLICT DO NOTHING", (fid, *checksum))

    def remove_copy(self, fid: int, devid: int) -> None:
        """Forgets a copy and makes it a stray, so the cleaner deletes it from the device."""
        with self.tx() as db:
            db.execute("DELETE FROM file_on WHERE fid = ? AND devid = ?", (fid, devid))
            self._strays(db, fid, [devid], 0)

    def reap_device(self, devid: int, batch: int) -> list[int]:
        """Forgets up to `batch` copies on a dead device and queues their fids for replication."""
        with self.tx() as db:
            fids = [r[0] for r in db.execute("SELECT fid FROM file_on WHERE devid = ? LIMIT ?",
                                             (devid, batch)).fetchall()]
            db.executemany("DELETE FROM file_on WHERE fid = ? AND devid = ?",
                           [(f, devid) for f in fids])
            live = [(f,) for f in fids if db.execute("SELECT 1 FROM file WHERE fid = ?",
                                                     (f,)).fetchone()]
            db.executemany(_QUEUE_REPLICATION, live)
            return fids

    def devices_with_copies(self, devids: Sequence[int]) -> list[int]:
        marks = ",".join("?" * len(devids))
        return [r[0] for r in self.all(
            f"SELECT DISTINCT devid FROM file_on WHERE devid IN ({marks})", *devids)]

    # -- deletion --------------------------------------------------------------------------

    def due_deletions(self, now: float, limit: int) -> list[Row]:
        return self.all("SELECT * FROM file_to_delete2 WHERE nexttry <= ? ORDER BY nexttry "
                        "LIMIT ?", int(now), limit)

    def forget_copy(self, fid: int, devid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM file_on WHERE fid = ? AND devid = ?", (fid, devid))

    def deletion_done(self, fid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM file_to_delete2 WHERE fid = ?", (fid,))
            db.execute("DELETE FROM checksum WHERE fid = ?", (fid,))
            db.execute("DELETE FROM file_to_replicate WHERE fid = ?", (fid,))

    def retry_deletion(self, fid: int, nexttry: float) -> None:
        with self.tx() as db:
            db.execute("UPDATE file_to_delete2 SET nexttry = ?, failcount = failcount + 1 "
                       "WHERE fid = ?", (int(nexttry), fid))

    def due_strays(self, now: float, limit: int) -> list[Row]:
        return self.all("SELECT * FROM stray_copy WHERE nexttry <= ? ORDER BY nexttry LIMIT ?",
                        int(now), limit)

    def stray_claimed(self, fid: int, devid: int) -> bool:
        return self.one("SELECT 1 FROM file_on WHERE fid = ? AND devid = ?", fid, devid) is not None

    def stray_done(self, fid: int, devid: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM stray_copy WHERE fid = ? AND devid = ?", (fid, devid))

    def retry_stray(self, fid: int, devid: int, nexttry: float) -> None:
        with self.tx() as db:
            db.execute("UPDATE stray_copy SET nexttry = ?, failcount = failcount + 1 "
                       "WHERE fid = ? AND devid = ?", (int(nexttry), fid, devid))

    def release_strays(self) -> None:
        """At start-up no copy is in flight: every stray may be cleaned now."""
        with self.tx() as db:
            db.execute("UPDATE stray_copy SET nexttry = 0")

    # -- settings --------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.all("SELECT field, value FROM server_settings")}

    def set_setting(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO server_settings (field, value) VALUES (?, ?) "
                       "ON CONFLICT (field) DO UPDATE SET value = excluded.value", (key, value))


def _devids(text: str | None) -> list[int]:
    return [int(d) for d in (text or "").split(",") if d]


def _storable(name: str) -> bool:
    """Whether a name can be in a TEXT column at all (PostgreSQL refuses NUL and bad UTF-8),
    so looking up one that cannot answers "not found" instead of a database error."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in name
