"""File namespace commands: create_open/close, get_paths, delete, rename, updateclass, info, lists.

Each handler takes the request's `Args` (and the client's address) and returns the reply's
key/value map, or raises `CommandError` with the reference's error code. Handlers that talk to
storage nodes (create_close's HEAD, get_paths' check) block only their own connection's greenlet.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any

from services.mogilefs import httpclient, policy
from services.mogilefs.devices import Device, read_order
from services.mogilefs.state import CommandError, TrackerState
from services.mogilefs.store import HASHNAMES, HASHTYPES, NoTempfile, Row
from services.mogilefs.wire import Args

log = logging.getLogger(__name__)

Reply = dict[str, Any]
Handler = Callable[[Args, str], Reply]

_CHECKSUM = re.compile(r"^(MD5):([0-9a-fA-F]{32})$|^(SHA-1):([0-9a-fA-F]{40})$")
#: Most devices create_open offers with multi_dest.
MULTI_DEST_MAX = 3
LIST_KEYS_MAX = 1000
LIST_FIDS_DEFAULT = 100
LIST_FIDS_MAX = 500


class Namespace:
    """The file commands of one tracker."""

    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.store = state.store

    def handlers(self) -> dict[str, Handler]:
        return {
            "create_open": self.create_open, "create_close": self.create_close,
            "get_paths": self.get_paths, "delete": self.delete, "rename": self.rename,
            "updateclass": self.updateclass, "file_info": self.file_info,
            "file_debug": self.file_debug, "list_keys": self.list_keys,
            "list_fids": self.list_fids,
        }

    # -- helpers ---------------------------------------------------------------------------

    def domain(self, args: Args) -> int:
        """The dmid of `domain`; no_domain / unreg_domain."""
        name = args.text("domain")
        if not name:
            raise CommandError("no_domain")
        dmid = self.store.domain_id(name)
        if dmid is None:
            raise CommandError("unreg_domain")
        return dmid

    def file_by_key(self, args: Args) -> tuple[int, Row]:
        dmid = self.domain(args)
        key = args.raw("key")
        if not key:
            raise CommandError("no_key")
        row = self.store.file_by_key(dmid, key)
        if row is None:
            raise CommandError("unknown_key")
        return dmid, row

    def class_name(self, dmid: int, classid: int) -> str:
        row = self.store.class_by_id(dmid, classid)
        return row["classname"] if row else "default"

    def class_rules(self, dmid: int, classid: int) -> tuple[policy.Policy, int, int]:
        """(policy, mindevcount, hashtype) of a class, the implicit default included."""
        row = self.store.class_by_id(dmid, classid)
        if row is None:
            return policy.DEFAULT, self.state.spec.default_mindevcount, 0
        return policy.parse(row["replpolicy"]), row["mindevcount"], row["hashtype"] or 0

    def checksum_text(self, fid: int, hashtype: int) -> str | None:
        stored = self.store.checksum(fid)
        if stored is not None:
            return f"{HASHNAMES.get(stored[0], 'NONE')}:{stored[1].hex()}"
        return "MISSING" if hashtype else None

    # -- two-phase create ------------------------------------------------------------------

    def create_open(self, args: Args, client: str) -> Reply:
        dmid = self.domain(args)
        classid = 0
        if args.text("class"):
            row = self.store.class_by_name(dmid, args.text("class"))
            if row is None and args.text("class") != "default":
                raise CommandError("unreg_class", "No such class")
            classid = row["classid"] if row else 0
        devices = self.state.topology.writeable(self.state.spec.min_free_space_mb,
                                                max(args.int("size"), 0))
        if not devices:
            raise CommandError("no_devices")
        if args.flag("multi_dest"):
            chosen = _spread(devices, MULTI_DEST_MAX)
        else:
            chosen = devices[:1]
        fid = self.store.create_tempfile(dmid, args.raw("key"), classid,
                                         [d.devid for d in chosen], args.int("fid") or None)
        if fid is None:
            raise CommandError("fid_in_use")
        if not args.flag("multi_dest"):
            return {"fid": fid, "devid": chosen[0].devid, "path": chosen[0].url(fid)}
        reply: Reply = {"fid": fid, "dev_count": len(chosen)}
        for i, d in enumerate(chosen, 1):
            reply[f"devid_{i}"] = d.devid
            reply[f"path_{i}"] = d.url(fid)
        return reply

    def create_close(self, args: Args, client: str) -> Reply:
        dmid = self.domain(args)
        fid, devid, path = args.int("fid"), args.int("devid"), args.text("path")
        if not fid:
            raise CommandError("no_fid")
        if not devid:
            raise CommandError("no_devid")
        if not path:
            raise CommandError("no_path")
        checksum: tuple[int, bytes] | None = None
        if args.raw("checksum"):
            m = _CHECKSUM.match(args.text("checksum"))
            if m is None:
                raise CommandError("invalid_checksum_format")
            name, hexdigest = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            checksum = (HASHTYPES[name], bytes.fromhex(hexdigest))
        temp = self.store.tempfile(fid)
        if temp is None:
            raise CommandError("no_temp_file")
        try:
            return self._close(args, dmid, temp, devid, path, checksum)
        except BaseException:
            # Whatever failed, the tempfile row is consumed and the uploaded copy is garbage.
            self.store.abandon_upload(fid, devid)
            self.state.delete_wakeup.set()
            raise

    def _close(self, args: Args, dmid: int, temp: Row, devid: int, path: str,
               checksum: tuple[int, bytes] | None) -> Reply:
        fid = temp["fid"]
        valid = [int(d) for d in (temp["devids"] or "").split(",") if d]
        if devid not in valid:
            raise CommandError("invalid_destdev", f"File uploaded to invalid dest {devid}. "
                               f"Valid devices were: {', '.join(map(str, valid))}")
        dev = self.state.topology.snapshot().get(devid)
        if dev is None or path != dev.url(fid):
            raise CommandError("bogus_args", "path does not match the device and fid")
        key = args.raw("key")
        if not key:
            # No key: the client abandons the upload, which the real tracker answers with OK.
            self.store.abandon_upload(fid, devid)
            self.state.delete_wakeup.set()
            return {}
        size = args.int("size")
        try:
            actual = httpclient.head_size(path, self.state.spec.http_timeout_s)
        except httpclient.HTTPError as e:
            raise CommandError("size_verify_error", f"Could not HEAD {path}: {e}") from None
        if actual is None:
            raise CommandError("size_verify_error", f"Expected: {size}; actual: missing; "
                               f"path: {path}")
        if size > 0 and actual != size:
            raise CommandError("size_mismatch",
                               f"Expected: {size}; actual: {actual}; path: {path}")
        _policy, _min, hashtype = self.class_rules(dmid, temp["classid"])
        if checksum is not None and args.flag("checksumverify"):
            try:
                got = httpclient.file_digest(path, HASHNAMES[checksum[0]],
                                             self.state.spec.copy_timeout_s)
            except httpclient.HTTPError as e:
                raise CommandError("checksum_mismatch", f"Could not read {path}: {e}") from None
            if got != checksum[1]:
                raise CommandError("checksum_mismatch",
                                   f"Expected: {checksum[1].hex()}; actual: "
                                   f"{got.hex() if got else 'missing'}; path: {path}")
        if checksum is not None and checksum[0] != hashtype:
            checksum = None
        try:
            self.store.close_file(fid, dmid, key, actual, devid, checksum)
        except NoTempfile:
            # Closed by a concurrent close or swept while we checked: that one owns the row.
            raise CommandError("no_temp_file") from None
        self.state.replicate_wakeup.set()
        self.state.delete_wakeup.set()
        return {}

    # -- reading ---------------------------------------------------------------------------

    def get_paths(self, args: Args, client: str) -> Reply:
        _dmid, row = self.file_by_key(args)
        fid, length = row["fid"], row["length"]
        pathcount = max(args.int("pathcount", 2), 2)
        devs = self.state.topology.snapshot()
        held = [devs[d] for d in self.store.file_devids(fid) if d in devs]
        readable = read_order([d for d in held if d.readable()])
        alt_zone = args.text("zone") == "alt"
        chosen: list[Device] = []
        verify = not args.flag("noverify")
        for d in readable:
            if len(chosen) >= pathcount:
                break
            if verify:
                if not self._size_ok(d.url(fid, get=True), length):
                    continue
                verify = False
            chosen.append(d)
        if not readable:
            backup = [d for d in held if d.status != "dead" and d.host_status != "dead"]
            chosen = backup[:1]
        reply: Reply = {"paths": len(chosen)}
        for i, d in enumerate(chosen, 1):
            alt = alt_zone or _in_mask(client, d, self.store.host(d.hostid))
            reply[f"path{i}"] = d.url(fid, get=True, alt=alt)
        return reply

    def _size_ok(self, url: str, length: int) -> bool:
        try:
            return self.state.heads.size(url, self.state.spec.verify_timeout_s) == length
        except httpclient.HTTPError:
            return False

    def file_info(self, args: Args, client: str) -> Reply:
        dmid, row = self.file_by_key(args)
        _p, _m, hashtype = self.class_rules(dmid, row["classid"])
        reply: Reply = {
            "fid": row["fid"], "domain": args.text("domain"),
            "class": self.class_name(dmid, row["classid"]), "key": bytes(row["dkey"]),
            "length": row["length"], "devcount": row["devcount"],
        }
        checksum = self.checksum_text(row["fid"], hashtype)
        if checksum is not None:
            reply["checksum"] = checksum
        if args.flag("devices"):
            reply["devids"] = ",".join(map(str, self.store.file_devids(row["fid"])))
        return reply

    def file_debug(self, args: Args, client: str) -> Reply:
        fid = args.int("fid")
        if not fid:
            _dmid, frow = self.file_by_key(args)
            fid = frow["fid"]
        reply: Reply = {}
        row = self.store.file(fid)
        if row is not None:
            for k in ("fid", "dmid", "dkey", "length", "classid", "devcount"):
                reply[f"fid_{k}"] = bytes(row[k]) if k == "dkey" else row[k]
            reply["fid_domain"] = next((d["namespace"] for d in self.store.domains()
                                        if d["dmid"] == row["dmid"]), "")
            reply["fid_class"] = self.class_name(row["dmid"], row["classid"])
        temp = self.store.tempfile(fid)
        if temp is not None:
            for k in ("dmid", "dkey", "classid", "devids"):
                value = temp[k]
                reply[f"tempfile_{k}"] = bytes(value) if isinstance(value, bytes) else value
        for prefix, queue in (("replqueue", self.store.replication(fid)),
                              ("delqueue", self.store.one(
                                  "SELECT * FROM file_to_delete2 WHERE fid = ?", fid))):
            if queue is not None:
                for k in queue.keys():
                    reply[f"{prefix}_{k}"] = queue[k]
        devids = self.store.file_devids(fid)
        if devids:
            reply["devids"] = ",".join(map(str, devids))
            devs = self.state.topology.snapshot()
            for d in devids:
                if d in devs:
                    reply[f"devpath_{d}"] = devs[d].url(fid, get=True)
        stored = self.store.checksum(fid)
        reply["checksum"] = (f"{HASHNAMES.get(stored[0], 'NONE')}:{stored[1].hex()}"
                             if stored else "NONE")
        return reply

    # -- changing names --------------------------------------------------------------------

    def delete(self, args: Args, client: str) -> Reply:
        _dmid, row = self.file_by_key(args)
        self.store.delete_file(row["fid"])
        self.state.delete_wakeup.set()
        return {}

    def rename(self, args: Args, client: str) -> Reply:
        dmid = self.domain(args)
        old, new = args.raw("from_key"), args.raw("to_key")
        if not old or not new:
            raise CommandError("no_key")
        row = self.store.file_by_key(dmid, old)
        if row is None:
            raise CommandError("unknown_key")
        if self.store.file_by_key(dmid, new) is not None:
            raise CommandError("key_exists")
        self.store.rename(row["fid"], new)
        return {}

    def updateclass(self, args: Args, client: str) -> Reply:
        dmid = self.domain(args)
        key, name = args.raw("key"), args.text("class")
        if not key:
            raise CommandError("no_key")
        if not name:
            raise CommandError("no_class")
        crow = self.store.class_by_name(dmid, name)
        if crow is None and name != "default":
            raise CommandError("class_not_found")
        classid = crow["classid"] if crow else 0
        row = self.store.file_by_key(dmid, key)
        if row is None:
            raise CommandError("invalid_key")
        if not self.store.file_devids(row["fid"]):
            raise CommandError("no_devices")
        if row["classid"] != classid:
            self.store.update_file_class(row["fid"], classid)
            self.state.replicate_wakeup.set()
        return {}

    # -- listing ---------------------------------------------------------------------------

    def list_keys(self, args: Args, client: str) -> Reply:
        dmid = self.domain(args)
        prefix, after = args.raw("prefix"), args.raw("after")
        if after and prefix and not after.startswith(prefix):
            raise CommandError("after_mismatch")
        limit = args.int("limit", LIST_KEYS_MAX) if args.raw("limit") else LIST_KEYS_MAX
        limit = -1 if limit < 0 else min(limit or LIST_KEYS_MAX, LIST_KEYS_MAX)
        keys = self.store.list_keys(dmid, prefix, after, limit,
                                    self.state.flag_setting("case_sensitive_list_keys"))
        if not keys:
            raise CommandError("none_match")
        reply: Reply = {"key_count": len(keys), "next_after": keys[-1]}
        for i, k in enumerate(keys, 1):
            reply[f"key_{i}"] = k
        return reply

    def list_fids(self, args: Args, client: str) -> Reply:
        count = args.int("to", LIST_FIDS_DEFAULT) if args.raw("to") else LIST_FIDS_DEFAULT
        count = LIST_FIDS_MAX if count < 0 else min(count, LIST_FIDS_MAX)
        rows = self.store.list_fids(args.int("from"), count)
        reply: Reply = {"fid_count": len(rows)}
        for i, r in enumerate(rows, 1):
            p = f"fid_{i}_"
            reply.update({p + "fid": r["fid"], p + "domain": r["namespace"],
                          p + "class": self.class_name(r["dmid"], r["classid"]),
                          p + "key": bytes(r["dkey"]), p + "length": r["length"],
                          p + "devcount": r["devcount"]})
        return reply


def _spread(devices: list[Device], n: int) -> list[Device]:
    """Up to `n` devices, one per host first, then others, keeping the given preference order."""
    first: list[Device] = []
    seen: set[int] = set()
    for d in devices:
        if d.hostid not in seen:
            first.append(d)
            seen.add(d.hostid)
    picked = {d.devid for d in first}
    rest = [d for d in devices if d.devid not in picked]
    return (first + rest)[:n]


def _in_mask(client: str, dev: Device, host: Row | None) -> bool:
    if host is None or not host["altip"] or not host["altmask"]:
        return False
    try:
        return ipaddress.ip_address(client) in ipaddress.ip_network(host["altmask"], strict=False)
    except ValueError:
        return False

