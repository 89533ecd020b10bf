"""Chunked upload sessions: one open streamed PUT per session, never the whole file in memory.

`begin_upload` allocates a fid with the tracker (`create_open`) and opens a chunked PUT to the
first destination device that accepts a connection (the next one when it does not). Each
`append_chunk` goes straight to that PUT while its MD5 (and SHA-1 when the class wants it) is
updated; `finish_upload` ends the body and the handler closes the file with the tracker.

Offsets
    A chunk must start at the bytes received so far. A chunk entirely before that (a retry of
    one already acknowledged) is acknowledged without writing; one that overlaps the end has
    only its new tail written; one that starts after the end is 409.

Failures
    A session whose stream failed (storage node gone, deadline hit mid-chunk) cannot resume:
    the bytes already sent are only on that node. It answers 409 naming the reason until it
    is aborted or expires; the caller starts a new upload.

Limits
    At most `max_sessions` open sessions (then 429, retryable); chunks of at most `max_chunk`
    bytes and files of at most `max_bytes` (413); a session idle for `idle_ttl_s` seconds is
    expired by the reaper, which drops its stream and discards its fid.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.lock

from services.core import errors
from services.filestore.storage import ChunkedPut, StorageFailure

log = logging.getLogger(__name__)

#: Open sessions per service process.
DEFAULT_MAX_SESSIONS = 64
#: Largest chunk append_chunk accepts, in bytes (well under the 16 MiB frame limit).
DEFAULT_MAX_CHUNK_BYTES = 8 * 1024 * 1024
#: Largest file an upload session accepts, in bytes (1 TiB).
DEFAULT_MAX_UPLOAD_BYTES = 1 << 40
#: A session with no call for this long is expired, in seconds.
DEFAULT_IDLE_TTL_S = 600.0
#: How long a second call on a busy session waits for the first, in seconds.
LOCK_WAIT_S = 60.0


@dataclass
class Session:
    """One upload in progress (the handler reads its fields to close the file)."""

    upload_id: str
    domain: str
    key: str
    storage_class: str | None
    checksum: str | None
    hashtype: str
    fid: int
    devid: int
    path: str
    stream: ChunkedPut | None
    received: int = 0
    md5: Any = field(default_factory=hashlib.md5)
    sha1: Any = None
    failed: str = ""
    touched: float = field(default_factory=time.monotonic)
    lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)

    def digest(self, algorithm: str) -> str:
        """"MD5:<hex>" or "SHA-1:<hex>" of the bytes received."""
        if algorithm == "SHA-1":
            return "SHA-1:" + (self.sha1.hexdigest() if self.sha1 else "")
        return "MD5:" + self.md5.hexdigest()


class Uploads:
    """The open sessions of one process (see the module docstring)."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_chunk: int = DEFAULT_MAX_CHUNK_BYTES,
                 max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
                 discard: Callable[[Session], None] | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_chunk = max_chunk
        self.max_bytes = max_bytes
        self.idle_ttl_s = idle_ttl_s
        self.discard = discard
        self.sessions: dict[str, Session] = {}
        self.expired = 0
        self._reaper = gevent.spawn(self._reap_loop)

    def check_room(self) -> None:
        """429 when no new session may start."""
        self.reap()
        if len(self.sessions) >= self.max_sessions:
            raise errors.too_many_requests(
                f"{len(self.sessions)} uploads are open (limit {self.max_sessions})",
                retry_after_ms=1000, limit=self.max_sessions)

    def open(self, domain: str, key: str, storage_class: str | None, checksum: str | None,
             hashtype: str, fid: int, dests: list[tuple[int, str]],
             connect: Callable[[str], ChunkedPut]) -> Session:
        """A new session streaming to the first of `dests` (devid, url) that accepts;
        StorageFailure when none does."""
        failures = []
        for devid, path in dests:
            try:
                stream = connect(path)
            except StorageFailure as e:
                log.warning("upload destination %s refused, trying the next: %s", path, e)
                failures.append(str(e))
                continue
            session = Session(uuid.uuid4().hex, domain, key, storage_class, checksum,
                              hashtype, fid, devid, path, stream)
            if hashtype == "SHA-1" or (checksum or "").startswith("SHA-1:"):
                session.sha1 = hashlib.sha1()
            self.sessions[session.upload_id] = session
            return session
        raise StorageFailure(", ".join(p for _, p in dests), "; ".join(failures))

    def get(self, upload_id: str) -> Session:
        """The live session; 404 when unknown or expired, 409 when it failed earlier."""
        session = self.sessions.get(upload_id)
        if session is None or self._idle(session):
            raise errors.not_found(f"no upload {upload_id!r} (finished, aborted or expired)",
                                   upload_id=upload_id)
        if session.failed:
            raise errors.conflict(f"upload {upload_id} failed earlier ({session.failed}); "
                                  f"start a new one", upload_id=upload_id)
        session.touched = time.monotonic()
        return session

    def append(self, session: Session, offset: int, data: bytes) -> int:
        """Writes the new part of `data` at `offset`; returns the bytes received (see the
        module docstring for the offset rules). A failed write fails the session (502)."""
        if len(data) > self.max_chunk:
            raise errors.too_large(f"chunk of {len(data)} bytes exceeds {self.max_chunk}",
                                   limit=self.max_chunk)
        if offset < 0 or offset > session.received:
            raise errors.conflict(f"offset {offset} does not continue the upload, which has "
                                  f"received {session.received} bytes",
                                  received=session.received, offset=offset)
        new = data[session.received - offset:] if offset < session.received else data
        if not new:
            return session.received
        if session.received + len(new) > self.max_bytes:
            raise errors.too_large(f"upload would exceed {self.max_bytes} bytes",
                                   limit=self.max_bytes)
        assert session.stream is not None
        done = False
        try:
            session.stream.write(new)
            done = True
        except StorageFailure as e:
            session.failed = str(e)
            raise errors.bad_gateway(f"storage node failed during the upload: {e}",
                                     upload_id=session.upload_id) from None
        finally:
            if not done and not session.failed:
                session.failed = "interrupted while writing a chunk"
        session.md5.update(new)
        if session.sha1 is not None:
            session.sha1.update(new)
        session.received += len(new)
        return session.received

    def detach(self, session: Session) -> None:
        """Forgets `session`, leaving its stream to the caller (to finish or close)."""
        self.sessions.pop(session.upload_id, None)

    def remove(self, session: Session) -> None:
        """Forgets `session` and drops its stream (the node discards a partial file)."""
        self.detach(session)
        if session.stream is not None:
            session.stream.close()

    def _idle(self, session: Session) -> bool:
        return time.monotonic() - session.touched > self.idle_ttl_s

    def reap(self) -> None:
        """Expires idle sessions: their streams are dropped and their fids discarded."""
        for session in [s for s in self.sessions.values() if self._idle(s)]:
            if session.lock.locked():
                continue
            log.info("upload %s of %r expired after %gs idle", session.upload_id, session.key,
                     self.idle_ttl_s)
            self.expired += 1
            self.remove(session)
            if self.discard is not None:
                try:
                    self.discard(session)
                except Exception:
                    log.exception("discarding expired upload %s failed", session.upload_id)

    def _reap_loop(self) -> None:
        while True:
            gevent.sleep(max(1.0, min(self.idle_ttl_s / 4, 30.0)))
            self.reap()

    def close(self) -> None:
        self._reaper.kill()
        for session in list(self.sessions.values()):
            self.remove(session)
