"""The Filestore Thrift handler: files in MogileFS for any Thrift language (idl/filestore.thrift).

The handler is a MogileFS client: the tracker protocol goes through `tracker.Trackers`, file
bytes through `storage.StorageClient` straight to the storage nodes, upload sessions through
`uploads.Uploads`, and paths may be cached in memcached (`pathcache.PathCache`).

Errors (all ServiceError; the server core adds the request id):

===============================================  ====  =========  ===========================
situation                                        code  retryable  notes
===============================================  ====  =========  ===========================
empty/over-long domain or key, bad options       400   no         `details.argument`
tracker: unreg_domain, unreg_class               400   no         `details.tracker_error`
unknown key, upload id, domain or class          404   no
key_exists (rename), *_exists, *_has_files       409   no
upload offset gap, failed upload session         409   no
no checksum stored but verify asked              412   no
file over the one-call limit, chunk too big      413   no         use fetch_range / sessions
too many open upload sessions                    429   yes
storage node failed, no readable copy            502   no         every copy was tried
no tracker reachable                             503   yes
no writable device                               507   no
content differs from its checksum                1002  no         every copy was tried
===============================================  ====  =========  ===========================

Overwrite, rename and delete follow MogileFS: a store to an existing key replaces it with a
new fid (the old copies are deleted by the tracker later); rename moves no data.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field

import glammp.filestore.Filestore
from glammp.base.ttypes import Status
from glammp.filestore.ttypes import (
    Domain,
    FetchOptions,
    FileInfo,
    KeyPage,
    PathOptions,
    StorageClass,
    StoreOptions,
    Upload,
)
from services.cache.client import Cluster
from services.cache.service import PoolConfig, build_cluster
from services.core import errors, streams
from services.core.errors import ErrorCode, ServiceError
from services.filestore import tracker as tracker_mod
from services.filestore.pathcache import PathCache
from services.filestore.storage import ChunkedPut, StorageClient, StorageFailure
from services.filestore.tracker import Reply, Trackers, tracker_code
from services.filestore.uploads import LOCK_WAIT_S, Session, Uploads

log = logging.getLogger(__name__)

SERVICE_NAME = "Filestore"
MODULE = glammp.filestore.Filestore
ORIGIN = "filestore"

#: Per-method deadlines in milliseconds (finishing a large upload waits for the tracker to
#: HEAD and, for classes with a hashtype, checksum the whole file).
DEADLINES_MS: dict[str, int] = {
    "store": 60_000,
    "begin_upload": 30_000,
    "append_chunk": 60_000,
    "finish_upload": 600_000,
    "abort_upload": 30_000,
    "fetch": 60_000,
    "fetch_range": 60_000,
    "get_paths": 10_000,
    "list_keys": 30_000,
}
IDEMPOTENT: frozenset[str] = frozenset({
    "fetch", "fetch_range", "get_paths", "exists", "info", "list_keys", "domains",
    "store", "append_chunk", "remove", "change_class",
})

#: The domain used when a call names none (glammp's dev cluster creates it).
DEFAULT_DOMAIN = "glammp"
#: Where MogileFS trackers listen by default.
DEFAULT_TRACKERS = ("127.0.0.1:7001",)
#: Largest file store() accepts and fetch() returns, in bytes (under the 16 MiB frame).
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024 - 64 * 1024
#: Seconds a cached path list lives in memcached.
DEFAULT_PATH_CACHE_TTL_S = 300
#: Paths asked for by reads (the copies tried in turn).
DEFAULT_READ_PATHCOUNT = 3
#: Seconds the domains and classes (hashtypes) read from the tracker are reused.
DEFAULT_CLASS_CACHE_TTL_S = 30.0
#: Longest key or domain, in bytes (MogileFS's schema: VARCHAR(255)).
MAX_NAME_BYTES = 255
#: Most keys one list_keys page returns (the tracker's own cap).
MAX_LIST_LIMIT = 1000
#: Most paths get_paths returns.
MAX_PATHCOUNT = 16
#: The slowest a tracker is assumed to HEAD and checksum a new file, in bytes per second:
#: create_close's reply may take size / this longer than the usual tracker timeout.
CLOSE_BYTES_PER_S = 20 * 1024 * 1024

_CHECKSUM = re.compile(r"\A(MD5:[0-9a-fA-F]{32}|SHA-1:[0-9a-fA-F]{40})\Z")


@dataclass(frozen=True)
class FilestoreConfig:
    """The ``[filestore]`` section.

    trackers: ``host:port`` of every tracker (MogileFS's default port when absent; `glammp
    serve` fills in its dev cluster's). path_cache: a memcached pool (as a cache pool
    table) for path caching; none: no caching. verify_reads: the default of FetchOptions.verify.
    """

    trackers: list[str] = field(default_factory=lambda: list(DEFAULT_TRACKERS))
    default_domain: str = DEFAULT_DOMAIN
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    read_pathcount: int = DEFAULT_READ_PATHCOUNT
    verify_reads: bool = False
    path_cache: PoolConfig | None = None
    path_cache_ttl_s: int = DEFAULT_PATH_CACHE_TTL_S
    class_cache_ttl_s: float = DEFAULT_CLASS_CACHE_TTL_S
    tracker_pool_size: int = tracker_mod.DEFAULT_POOL_SIZE
    tracker_connect_timeout_ms: int = int(tracker_mod.DEFAULT_CONNECT_TIMEOUT_S * 1000)
    tracker_timeout_ms: int = int(tracker_mod.DEFAULT_IO_TIMEOUT_S * 1000)
    tracker_retry_dead_ms: int = int(tracker_mod.DEFAULT_RETRY_DEAD_S * 1000)
    storage_connect_timeout_ms: int = 2000
    storage_timeout_ms: int = 60_000
    upload_max_sessions: int = 64
    upload_max_chunk_bytes: int = 8 * 1024 * 1024
    upload_max_bytes: int = 1 << 40
    upload_idle_ttl_s: float = 600.0

    def validate(self) -> None:
        if not self.trackers:
            raise ValueError("trackers: at least one host:port is needed")
        for address in self.trackers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"trackers: {address!r} is not host:port")
        for name in ("max_file_bytes", "read_pathcount", "path_cache_ttl_s",
                     "tracker_pool_size", "tracker_connect_timeout_ms", "tracker_timeout_ms",
                     "storage_connect_timeout_ms", "storage_timeout_ms",
                     "upload_max_sessions", "upload_max_chunk_bytes", "upload_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.upload_idle_ttl_s <= 0 or self.class_cache_ttl_s < 0:
            raise ValueError("upload_idle_ttl_s must be > 0 and class_cache_ttl_s >= 0")


def create(config: FilestoreConfig) -> FilestoreHandler:
    return FilestoreHandler(config)


def _name(value: str | None, what: str) -> str:
    if not value:
        raise errors.bad_request(f"{what} is empty", argument=what)
    if len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise errors.bad_request(f"{what} is longer than {MAX_NAME_BYTES} bytes",
                                 argument=what, rule=f"1-{MAX_NAME_BYTES} bytes")
    return value


def _checksum(value: str | None) -> str | None:
    if not value:
        return None
    if not _CHECKSUM.match(value):
        raise errors.bad_request(f"checksum {value[:60]!r} is not MD5:<32 hex> or SHA-1:<40 hex>",
                                 argument="checksum")
    algorithm, _, hexdigest = value.partition(":")
    return f"{algorithm}:{hexdigest.lower()}"


def checksum_mismatch(message: str, **details: object) -> ServiceError:
    return errors.service_error(ErrorCode.CHECKSUM_MISMATCH, message, retryable=False,
                                details=details)


class FilestoreHandler:
    """The Filestore service's handler (see the module docstring)."""

    def __init__(self, config: FilestoreConfig) -> None:
        config.validate()
        self.config = config
        self.trackers = Trackers(
            config.trackers, config.tracker_pool_size,
            connect_timeout_s=config.tracker_connect_timeout_ms / 1000,
            io_timeout_s=config.tracker_timeout_ms / 1000,
            retry_dead_s=config.tracker_retry_dead_ms / 1000)
        self.storage = StorageClient(config.storage_connect_timeout_ms / 1000,
                                     config.storage_timeout_ms / 1000)
        self.paths: PathCache | None = None
        if config.path_cache is not None:
            cluster: Cluster = build_cluster("filestore-paths", config.path_cache)
            self.paths = PathCache(cluster, config.path_cache_ttl_s)
        self.uploads = Uploads(config.upload_max_sessions, config.upload_max_chunk_bytes,
                               config.upload_max_bytes, config.upload_idle_ttl_s,
                               discard=self._discard)
        self._classes: dict[str, dict[str, StorageClass]] = {}
        self._classes_at = -1e9

    # -- helpers ---------------------------------------------------------------------------

    def _domain(self, domain: str | None) -> str:
        return _name(domain or self.config.default_domain, "domain")

    def _domains(self, refresh: bool = False) -> dict[str, dict[str, StorageClass]]:
        """domain -> class name -> StorageClass, from get_domains (reused for a while)."""
        if refresh or time.monotonic() - self._classes_at > self.config.class_cache_ttl_s:
            reply = self.trackers.call("get_domains", idempotent=True)
            self._classes = _parse_domains(reply)
            self._classes_at = time.monotonic()
        return self._classes

    def _hashtype(self, domain: str, storage_class: str | None) -> str:
        """The class's hashtype ("NONE", "MD5", "SHA-1"); "NONE" when unknown (the tracker
        then reports the unknown class itself)."""
        name = storage_class or "default"
        classes = self._domains().get(domain)
        if classes is None or name not in classes:
            classes = self._domains(refresh=True).get(domain, {})
        found = classes.get(name)
        return (found.hashtype or "NONE") if found else "NONE"

    def _invalidate(self, domain: str, *keys: str) -> None:
        if self.paths is not None:
            for key in keys:
                self.paths.invalidate(domain, key)

    def _create_open(self, domain: str, key: str, storage_class: str | None,
                     size: int | None) -> tuple[int, list[tuple[int, str]]]:
        reply = self.trackers.call("create_open", {
            "domain": domain, "key": key, "class": storage_class, "fid": 0, "multi_dest": 1,
            "size": size or None})
        fid = reply.int("fid")
        if "dev_count" in reply:
            dests = [(reply.int(f"devid_{i}"), reply.text(f"path_{i}"))
                     for i in range(1, reply.int("dev_count") + 1)]
        else:
            dests = [(reply.int("devid"), reply.text("path"))]
        dests = [(d, p) for d, p in dests if d and p]
        if not fid or not dests:
            raise errors.bad_gateway(f"create_open answered without a destination: {reply!r}")
        return fid, dests

    def _close(self, domain: str, key: str, fid: int, devid: int, path: str, size: int,
               checksum: str | None, hashtype: str) -> str:
        """create_close; returns the checksum the tracker stored ("" when none)."""
        stored = checksum if checksum and checksum.startswith(hashtype + ":") else None
        self.trackers.call("create_close", {
            "domain": domain, "key": key, "fid": fid, "devid": devid, "path": path,
            "size": size, "checksum": stored, "checksumverify": 1 if stored else None},
            timeout_s=self.trackers.io_timeout_s + size / CLOSE_BYTES_PER_S)
        self._invalidate(domain, key)
        return stored or ""

    def _discard(self, session: Session) -> None:
        """Tells the tracker an upload will never be closed (create_close without a key)."""
        self._discard_fid(session.domain, session.fid, session.devid, session.path)

    def _discard_fid(self, domain: str, fid: int, devid: int, path: str) -> None:
        self.trackers.call("create_close", {"domain": domain, "fid": fid, "devid": devid,
                                            "path": path})

    def _tracker_paths(self, domain: str, key: str, pathcount: int, noverify: bool,
                       zone: str | None) -> list[str]:
        reply = self.trackers.call("get_paths", {
            "domain": domain, "key": key, "noverify": 1 if noverify else None,
            "pathcount": pathcount, "zone": zone}, idempotent=True)
        return [p for p in (reply.text(f"path{i}") for i in range(1, reply.int("paths") + 1))
                if p]

    def _read(self, domain: str, key: str, offset: int, length: int | None,
              check: str | None = None) -> bytes | streams.StreamedBody:
        """Bytes of (domain, key) from the first good copy; cached paths first, then the
        tracker's when the cached ones fail. `check` is a checksum every copy must match.
        Without one, a large copy comes back as a body the server sends on as it arrives
        (see `services.core.streams`), which finds the rest on the other paths if its node
        fails midway."""
        count = self.config.read_pathcount
        mismatches: list[str] = []

        def verify(url: str, data: bytes) -> str | None:
            assert check is not None
            algorithm, _, want = check.partition(":")
            h = hashlib.sha1(data) if algorithm == "SHA-1" else hashlib.md5(data)
            if h.hexdigest() == want:
                return None
            mismatches.append(url)
            return f"{algorithm}:{h.hexdigest()} differs from the stored {check}"

        cached = self.paths.get(domain, key, "", count) if self.paths else None
        last: StorageFailure | None = None
        for paths in (cached, None):
            if paths is None:
                if cached is not None:
                    self._invalidate(domain, key)
                paths = self._tracker_paths(domain, key, count, True, None)
                if self.paths is not None:
                    self.paths.put(domain, key, "", count, paths)
            try:
                # Large copies are sent on as they arrive (no checksum to verify first).
                return self.storage.read(paths, offset, length, self.config.max_file_bytes,
                                         verify if check is not None else None,
                                         streams.MIN_BYTES)
            except StorageFailure as e:
                last = e
                if cached is None:
                    break
        assert last is not None
        if last.missing and not self.exists(domain, key):
            raise errors.not_found(f"{key!r} was removed while being read", key=key)
        if mismatches:
            raise checksum_mismatch(f"no copy of {key!r} matches its checksum {check}: {last}",
                                    key=key, checksum=check, copies=",".join(mismatches))
        raise errors.bad_gateway(f"no readable copy of {key!r}: {last}", key=key)

    # -- storing ---------------------------------------------------------------------------

    def store(self, domain: str, key: str, data: bytes, opts: StoreOptions | None) -> FileInfo:
        domain, key = self._domain(domain), _name(key, "key")
        data = data or b""
        if len(data) > self.config.max_file_bytes:
            raise errors.too_large(f"{len(data)} bytes exceed {self.config.max_file_bytes}; "
                                   f"use an upload session", limit=self.config.max_file_bytes)
        storage_class = opts.storage_class if opts else None
        given = _checksum(opts.checksum if opts else None)
        # Digests cost ~1.5 ms per MiB: computed only when the class stores one or the caller
        # gave one to check (the storage node then also checks the body's Content-MD5).
        hashtype = self._hashtype(domain, storage_class)
        wanted = {hashtype, (given or "").partition(":")[0]}
        digests: dict[str, str] = {}
        content_md5 = None
        if "MD5" in wanted:
            md5 = hashlib.md5(data)
            digests["MD5"] = "MD5:" + md5.hexdigest()
            content_md5 = base64.b64encode(md5.digest()).decode()
        if "SHA-1" in wanted:
            digests["SHA-1"] = "SHA-1:" + hashlib.sha1(data).hexdigest()
        if given is not None and given not in digests.values():
            raise checksum_mismatch(f"content does not match the checksum {given}", key=key)
        failures: list[str] = []
        # A second create_open when every destination of the first refused the PUT.
        for _attempt in range(2):
            fid, dests = self._create_open(domain, key, storage_class, len(data))
            for devid, path in dests:
                try:
                    self.storage.put(path, data, content_md5)
                except StorageFailure as e:
                    log.warning("upload to %s failed, trying another device: %s", path, e)
                    failures.append(str(e))
                    continue
                stored = self._close(domain, key, fid, devid, path, len(data),
                                     digests.get(hashtype), hashtype)
                return FileInfo(domain, key, fid, len(data), storage_class or "default", 1,
                                stored, [devid])
            self._discard_fid_quietly(domain, fid, *dests[0])
        raise errors.bad_gateway(f"every storage device refused {key!r}: "
                                 + "; ".join(failures), key=key)

    def begin_upload(self, domain: str, key: str, opts: StoreOptions | None) -> Upload:
        domain, key = self._domain(domain), _name(key, "key")
        storage_class = opts.storage_class if opts else None
        given = _checksum(opts.checksum if opts else None)
        self.uploads.check_room()
        hashtype = self._hashtype(domain, storage_class)
        failures: list[str] = []
        for _attempt in range(2):
            fid, dests = self._create_open(domain, key, storage_class, None)
            try:
                session = self.uploads.open(domain, key, storage_class, given, hashtype, fid,
                                            dests, lambda url: ChunkedPut(self.storage, url))
            except StorageFailure as e:
                failures.append(str(e))
                self._discard_fid_quietly(domain, fid, *dests[0])
                continue
            return Upload(session.upload_id, self.uploads.max_chunk)
        raise errors.bad_gateway(f"no storage device accepted the upload of {key!r}: "
                                 + "; ".join(failures), key=key)

    def append_chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        session = self.uploads.get(upload_id or "")
        if not session.lock.acquire(timeout=LOCK_WAIT_S):
            raise errors.conflict(f"upload {upload_id} is busy with another chunk")
        try:
            return self.uploads.append(self.uploads.get(upload_id), offset, data or b"")
        finally:
            session.lock.release()

    def finish_upload(self, upload_id: str, opts: StoreOptions | None) -> FileInfo:
        session = self.uploads.get(upload_id or "")
        given = _checksum(opts.checksum if opts else None) or session.checksum
        if not session.lock.acquire(timeout=LOCK_WAIT_S):
            raise errors.conflict(f"upload {upload_id} is busy with another chunk")
        try:
            self.uploads.get(upload_id)
            # From here the session is over whatever happens: it cannot be finished twice.
            self.uploads.detach(session)
            computed = session.digest("SHA-1" if (given or "").startswith("SHA-1:") else "MD5")
            assert session.stream is not None
            closed = False
            try:
                if given is not None and given != computed:
                    raise checksum_mismatch(f"upload of {session.key!r} is {computed}, "
                                            f"not {given}", key=session.key)
                try:
                    session.stream.finish()
                except StorageFailure as e:
                    raise errors.bad_gateway(f"storage node failed to store the upload: {e}",
                                             key=session.key) from None
                stored = self._close(session.domain, session.key, session.fid, session.devid,
                                     session.path, session.received,
                                     session.digest(session.hashtype), session.hashtype)
                closed = True
            finally:
                session.stream.close()
                if not closed:
                    self._discard_quietly(session)
        finally:
            session.lock.release()
        storage_class = session.storage_class or "default"
        new_class = opts.storage_class if opts else None
        if new_class and new_class != storage_class:
            self.change_class(session.domain, session.key, new_class)
            storage_class = new_class
        return FileInfo(session.domain, session.key, session.fid, session.received,
                        storage_class, 1, stored, [session.devid])

    def abort_upload(self, upload_id: str) -> None:
        session = self.uploads.sessions.get(upload_id or "")
        if session is None:
            raise errors.not_found(f"no upload {upload_id!r}", upload_id=upload_id)
        self.uploads.remove(session)
        self._discard_quietly(session)

    def _discard_quietly(self, session: Session) -> None:
        self._discard_fid_quietly(session.domain, session.fid, session.devid, session.path)

    def _discard_fid_quietly(self, domain: str, fid: int, devid: int, path: str) -> None:
        try:
            self._discard_fid(domain, fid, devid, path)
        except ServiceError as e:
            # The tracker sweeps unclosed fids itself (after an hour on MogileFS).
            log.warning("discarding fid %d failed: %s", fid, e.message)

    # -- reading ---------------------------------------------------------------------------

    def fetch(self, domain: str, key: str,
              opts: FetchOptions | None) -> bytes | streams.StreamedBody:
        domain, key = self._domain(domain), _name(key, "key")
        verify = self.config.verify_reads if opts is None or opts.verify is None \
            else opts.verify
        check = None
        if verify:
            info = self.info(domain, key)
            if not info.checksum:
                raise errors.service_error(
                    ErrorCode.PRECONDITION_FAILED,
                    f"{key!r} has no stored checksum to verify (its class "
                    f"{info.storage_class!r} has no hashtype)", retryable=False,
                    details={"key": key})
            check = info.checksum
        return self._read(domain, key, 0, None, check)

    def fetch_range(self, domain: str, key: str, offset: int,
                    length: int) -> bytes | streams.StreamedBody:
        domain, key = self._domain(domain), _name(key, "key")
        if offset is None or length is None or offset < 0 or length < 0:
            raise errors.bad_request("offset and length must be >= 0", argument="offset")
        if length > self.config.max_file_bytes:
            raise errors.too_large(f"length {length} exceeds {self.config.max_file_bytes}",
                                   limit=self.config.max_file_bytes)
        if length == 0:
            return b""
        return self._read(domain, key, offset, length)

    def get_paths(self, domain: str, key: str, opts: PathOptions | None) -> list[str]:
        domain, key = self._domain(domain), _name(key, "key")
        opts = opts or PathOptions()
        noverify = bool(opts.noverify)
        pathcount = 2 if opts.pathcount is None else opts.pathcount
        if not 1 <= pathcount <= MAX_PATHCOUNT:
            raise errors.bad_request(f"pathcount must be 1..{MAX_PATHCOUNT}",
                                     argument="pathcount")
        zone = opts.zone or ""
        cache = self.paths if zone in ("", "alt") else None
        if cache is not None:
            paths = cache.get(domain, key, zone, pathcount)
            if paths is not None:
                if noverify or self._head_ok(paths[0]):
                    return paths
                cache.invalidate(domain, key)
        paths = self._tracker_paths(domain, key, max(pathcount, 2), noverify, zone or None)
        if cache is not None:
            cache.put(domain, key, zone, max(pathcount, 2), paths)
        return paths[:pathcount]

    def _head_ok(self, url: str) -> bool:
        try:
            self.storage.head(url)
            return True
        except StorageFailure:
            return False

    # -- namespace -------------------------------------------------------------------------

    def remove(self, domain: str, key: str) -> None:
        domain, key = self._domain(domain), _name(key, "key")
        try:
            self.trackers.call("delete", {"domain": domain, "key": key})
        finally:
            self._invalidate(domain, key)

    def rename(self, domain: str, from_key: str, to_key: str) -> None:
        domain = self._domain(domain)
        from_key, to_key = _name(from_key, "from_key"), _name(to_key, "to_key")
        try:
            self.trackers.call("rename", {"domain": domain, "from_key": from_key,
                                          "to_key": to_key})
        finally:
            self._invalidate(domain, from_key, to_key)

    def exists(self, domain: str, key: str) -> bool:
        domain, key = self._domain(domain), _name(key, "key")
        try:
            self.trackers.call("file_info", {"domain": domain, "key": key}, idempotent=True)
        except ServiceError as e:
            if tracker_code(e) == "unknown_key":
                return False
            raise
        return True

    def info(self, domain: str, key: str) -> FileInfo:
        domain, key = self._domain(domain), _name(key, "key")
        r = self.trackers.call("file_info", {"domain": domain, "key": key, "devices": 1},
                               idempotent=True)
        devids = [int(d) for d in r.text("devids").split(",") if d.strip().isdigit()]
        checksum = r.text("checksum")
        return FileInfo(r.text("domain", domain), r.text("key", key), r.int("fid"),
                        r.int("length"), r.text("class", "default"),
                        len(devids) if "devids" in r else r.int("devcount"),
                        "" if checksum in ("MISSING", "NONE") else checksum, devids)

    def change_class(self, domain: str, key: str, storage_class: str) -> None:
        domain, key = self._domain(domain), _name(key, "key")
        self.trackers.call("updateclass", {"domain": domain, "key": key,
                                           "class": _name(storage_class, "storage_class")})
        self._invalidate(domain, key)

    def list_keys(self, domain: str, prefix: str, after: str, limit: int) -> KeyPage:
        domain = self._domain(domain)
        prefix, after = prefix or "", after or ""
        if limit is None or limit <= 0:
            limit = MAX_LIST_LIMIT
        limit = min(limit, MAX_LIST_LIMIT)
        if after and not after.startswith(prefix):
            if after < prefix:
                after = ""  # every key with the prefix comes after `after`
            else:
                return KeyPage([], "")  # every key with the prefix comes before it
        try:
            r = self.trackers.call("list_keys", {"domain": domain, "prefix": prefix or None,
                                                 "after": after or None, "limit": limit},
                                   idempotent=True)
        except ServiceError as e:
            if tracker_code(e) == "none_match":
                return KeyPage([], "")
            raise
        raw = [r.text(f"key_{i}") for i in range(1, r.int("key_count") + 1)]
        # Trackers on SQLite/MySQL may match the prefix case-insensitively: keep exact ones.
        keys = sorted(k for k in raw if k.startswith(prefix))
        last = max(raw, key=lambda k: k.encode("utf-8", "surrogateescape")) if raw else ""
        return KeyPage(keys, last if len(raw) >= limit else "")

    # -- domains and classes ---------------------------------------------------------------

    def domains(self) -> list[Domain]:
        found = self._domains(refresh=True)
        return [Domain(name, sorted(classes.values(), key=lambda c: c.name))
                for name, classes in sorted(found.items())]

    def create_domain(self, domain: str) -> None:
        self.trackers.call("create_domain", {"domain": _name(domain, "domain")})
        self._classes_at = -1e9

    def delete_domain(self, domain: str) -> None:
        self.trackers.call("delete_domain", {"domain": _name(domain, "domain")})
        self._classes_at = -1e9

    def _class_args(self, domain: str, cls: StorageClass | None) -> dict[str, object]:
        if cls is None:
            raise errors.bad_request("cls is missing", argument="cls")
        if cls.mindevcount is None or cls.mindevcount < 1:
            raise errors.bad_request("mindevcount must be >= 1", argument="mindevcount")
        return {"domain": _name(domain, "domain"), "class": _name(cls.name, "name"),
                "mindevcount": cls.mindevcount, "replpolicy": cls.replpolicy or None,
                "hashtype": cls.hashtype or None}

    def create_class(self, domain: str, cls: StorageClass) -> None:
        self.trackers.call("create_class", self._class_args(domain, cls))
        self._classes_at = -1e9

    def update_class(self, domain: str, cls: StorageClass) -> None:
        self.trackers.call("update_class", self._class_args(domain, cls))
        self._classes_at = -1e9

    def delete_class(self, domain: str, name: str) -> None:
        self.trackers.call("delete_class", {"domain": _name(domain, "domain"),
                                            "class": _name(name, "name")})
        self._classes_at = -1e9

    # -- lifecycle -------------------------------------------------------------------------

    def health(self) -> tuple[int, str]:
        now = time.monotonic()
        dead = [n.address for n in self.trackers.nodes if n.dead_until > now]
        total = len(self.trackers.nodes)
        if not dead:
            return Status.ALIVE, f"{total} trackers, none marked dead"
        if len(dead) == total:
            return Status.DEAD, "every tracker is unreachable"
        return Status.WARNING, f"trackers unreachable: {', '.join(dead)}"

    def counters(self) -> dict[str, int]:
        out = {"filestore.uploads.open": len(self.uploads.sessions),
               "filestore.uploads.expired": self.uploads.expired}
        if self.paths is not None:
            out["filestore.path_cache.hits"] = self.paths.hits
            out["filestore.path_cache.misses"] = self.paths.misses
        return out

    def close(self) -> None:
        self.uploads.close()
        self.trackers.close()
        self.storage.close()
        if self.paths is not None:
            self.paths.close()


def _parse_domains(r: Reply) -> dict[str, dict[str, StorageClass]]:
    out: dict[str, dict[str, StorageClass]] = {}
    for i in range(1, r.int("domains") + 1):
        classes: dict[str, StorageClass] = {}
        for j in range(1, r.int(f"domain{i}classes") + 1):
            p = f"domain{i}class{j}"
            name = r.text(p + "name")
            classes[name] = StorageClass(name, r.int(p + "mindevcount"),
                                         r.text(p + "replpolicy") or None,
                                         r.text(p + "hashtype") or "NONE")
        out[r.text(f"domain{i}")] = classes
    return out
