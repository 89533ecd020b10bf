"""Cluster commands: domains, classes, hosts, devices, server settings and small utilities.

Same contract as `namespace`: each handler takes `Args` and the client address and returns the
reply map or raises `CommandError`. `ADMIN_COMMANDS` lists the ones `admin_clients` restricts.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any

import gevent

from services.mogilefs import policy
from services.mogilefs.devices import DEVICE_STATES, HOST_STATES
from services.mogilefs.state import CommandError, TrackerState
from services.mogilefs.store import HASHNAMES, HASHTYPES, Duplicate, Row
from services.mogilefs.wire import Args

Reply = dict[str, Any]
Handler = Callable[[Args, str], Reply]

ADMIN_COMMANDS = frozenset({
    "create_domain", "delete_domain", "create_class", "update_class", "delete_class",
    "create_host", "update_host", "delete_host", "create_device", "set_state", "set_weight",
    "set_server_setting", "replicate_now", "do_monitor_round", "clear_cache", "sleep",
})

#: Settings `set_server_setting` accepts, by exact name or prefix, with their value check.
_BOOL = re.compile(r"^(0|f|off|n|1|t|on|y)$", re.IGNORECASE)
_NUM = re.compile(r"^\d*$")
_WRITABLE: list[tuple[str, re.Pattern[str] | None]] = [
    ("slave_", None), ("skip_devcount", _BOOL), ("skip_mkcol", _BOOL),
    ("case_sensitive_list_keys", _BOOL), ("memcache_servers", None), ("memcache_ttl", _NUM),
    ("internal_queue_limit", _NUM), ("network_zones", None), ("zone_", None), ("queue_", None),
    ("fsck_checksum", re.compile(r"^(off|class|MD5|SHA-1)$")),
]
#: Longest `sleep` a client may ask for, in seconds (it holds one connection, not a worker).
SLEEP_MAX_S = 60.0
#: How long create_device and do_monitor_round wait for the monitor, in seconds.
MONITOR_WAIT_S = 10.0


class Catalog:
    """Domain, class, host, device and settings commands of one tracker."""

    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.store = state.store

    def handlers(self) -> dict[str, Handler]:
        return {
            "get_domains": self.get_domains, "create_domain": self.create_domain,
            "delete_domain": self.delete_domain, "create_class": self.create_class,
            "update_class": self.update_class, "delete_class": self.delete_class,
            "get_hosts": self.get_hosts, "create_host": self.create_host,
            "update_host": self.update_host, "delete_host": self.delete_host,
            "get_devices": self.get_devices, "create_device": self.create_device,
            "set_state": self.set_state, "set_weight": self.set_weight,
            "noop": lambda a, c: {}, "test": self.test, "sleep": self.sleep,
            "clear_cache": lambda a, c: dict(a.items()),
            "do_monitor_round": self.do_monitor_round, "replicate_now": self.replicate_now,
            "server_setting": self.server_setting, "server_settings": self.server_settings,
            "set_server_setting": self.set_server_setting,
        }

    # -- domains and classes ---------------------------------------------------------------

    def get_domains(self, args: Args, client: str) -> Reply:
        reply: Reply = {}
        domains = self.store.domains()
        reply["domains"] = len(domains)
        for i, d in enumerate(domains, 1):
            rows = {r["classname"]: r for r in self.store.classes(d["dmid"])}
            classes: list[tuple[str, int, str, str]] = []
            if "default" not in rows:
                classes.append(("default", self.state.spec.default_mindevcount,
                                str(policy.DEFAULT), "NONE"))
            for r in rows.values():
                classes.append((r["classname"], r["mindevcount"],
                                str(policy.parse(r["replpolicy"])),
                                HASHNAMES.get(r["hashtype"] or 0, "NONE")))
            reply[f"domain{i}"] = d["namespace"]
            reply[f"domain{i}classes"] = len(classes)
            for j, (name, mindev, repl, hashtype) in enumerate(classes, 1):
                p = f"domain{i}class{j}"
                reply.update({p + "name": name, p + "mindevcount": mindev,
                              p + "replpolicy": repl, p + "hashtype": hashtype})
        return reply

    def create_domain(self, args: Args, client: str) -> Reply:
        name = args.text("domain")
        if not name:
            raise CommandError("no_domain")
        try:
            self.store.create_domain(name)
        except Duplicate:
            raise CommandError("domain_exists") from None
        return {"domain": name}

    def delete_domain(self, args: Args, client: str) -> Reply:
        name = args.text("domain")
        if not name:
            raise CommandError("no_domain")
        dmid = self.store.domain_id(name)
        if dmid is None:
            raise CommandError("domain_not_found")
        if self.store.domain_has_files(dmid):
            raise CommandError("domain_has_files")
        if any(r["classname"] != "default" for r in self.store.classes(dmid)):
            raise CommandError("domain_has_classes")
        self.store.delete_domain(dmid)
        return {"domain": name}

    def create_class(self, args: Args, client: str) -> Reply:
        return self._save_class(args, update=False)

    def update_class(self, args: Args, client: str) -> Reply:
        return self._save_class(args, update=True)

    def _save_class(self, args: Args, update: bool) -> Reply:
        domain, name = args.text("domain"), args.text("class")
        if not domain:
            raise CommandError("no_domain")
        if not name:
            raise CommandError("no_class")
        mindevcount = args.int("mindevcount")
        if mindevcount < 1:
            raise CommandError("invalid_mindevcount")
        replpolicy = None
        if args.raw("replpolicy"):
            try:
                replpolicy = str(policy.parse(args.text("replpolicy")))
            except ValueError as e:
                raise CommandError("invalid_replpolicy", str(e)) from None
        hashtype = None
        if args.raw("hashtype"):
            ht = args.text("hashtype")
            if ht != "NONE" and ht not in HASHTYPES:
                raise CommandError("invalid_hashtype")
            hashtype = HASHTYPES.get(ht, 0)
        dmid = self.store.domain_id(domain)
        if dmid is None:
            raise CommandError("domain_not_found")
        exists = self.store.class_by_name(dmid, name) is not None
        if exists and not update:
            raise CommandError("class_exists")
        if not exists and update and name != "default":
            raise CommandError("class_not_found")
        self.store.save_class(dmid, name, mindevcount, replpolicy, hashtype, update)
        if update:
            # A changed policy may need more copies: let the replicator look at this class.
            self.state.replicate_wakeup.set()
        return {"class": name, "mindevcount": mindevcount, "domain": domain}

    def delete_class(self, args: Args, client: str) -> Reply:
        domain, name = args.text("domain"), args.text("class")
        if not domain:
            raise CommandError("no_domain")
        if name == "default":
            raise CommandError("nodel_default_class")
        dmid = self.store.domain_id(domain)
        if dmid is None:
            raise CommandError("domain_not_found")
        row = self.store.class_by_name(dmid, name) if name else None
        if row is None:
            raise CommandError("class_not_found")
        if self.store.class_has_files(dmid, row["classid"]):
            raise CommandError("class_has_files")
        self.store.delete_class(dmid, row["classid"])
        return {"domain": domain, "class": name}

    # -- hosts -----------------------------------------------------------------------------

    def get_hosts(self, args: Args, client: str) -> Reply:
        hosts = self.store.hosts()
        if args.raw("hostid"):
            hosts = [h for h in hosts if h["hostid"] == args.int("hostid")]
        reply: Reply = {"hosts": len(hosts)}
        for i, h in enumerate(hosts, 1):
            for k in ("hostid", "hostname", "hostip", "http_port", "http_get_port", "altip",
                      "altmask", "status"):
                reply[f"host{i}_{k}"] = h[k]
        return reply

    def _host_fields(self, args: Args) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for arg, col in (("ip", "hostip"), ("port", "http_port"), ("getport", "http_get_port"),
                         ("altip", "altip"), ("altmask", "altmask"), ("status", "status")):
            if not args.has(arg):
                continue
            value: Any = args.text(arg) or None
            if value is not None and col in ("http_port", "http_get_port"):
                value = args.int(arg) or None
            if col == "status" and value not in HOST_STATES:
                raise CommandError("unknown_state")
            if col in ("hostip", "altip") and value is not None:
                try:
                    ipaddress.IPv4Address(value)
                except ValueError:
                    raise CommandError("bad_params", f"Invalid IP address {value}") from None
            if col == "altmask" and value is not None:
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise CommandError("bad_params", f"Invalid netmask {value}") from None
            fields[col] = value
        return fields

    def create_host(self, args: Args, client: str) -> Reply:
        name = args.text("host")
        if not name:
            raise CommandError("no_host")
        if self.store.host_by_name(name) is not None:
            raise CommandError("host_exists")
        if not args.text("ip"):
            raise CommandError("no_ip")
        if not args.int("port"):
            raise CommandError("no_port")
        fields = self._host_fields(args)
        fields.setdefault("status", "down")
        fields["hostname"] = name
        try:
            hostid = self.store.create_host(fields)
        except Duplicate:
            raise CommandError("dup") from None
        return {"hostid": hostid, "hostname": name}

    def update_host(self, args: Args, client: str) -> Reply:
        name = args.text("host")
        if not name:
            raise CommandError("no_host")
        row = self.store.host_by_name(name)
        if row is None:
            raise CommandError("host_not_found")
        try:
            self.store.update_host(row["hostid"], self._host_fields(args))
        except Duplicate:
            raise CommandError("dup") from None
        return {"hostid": row["hostid"], "hostname": name}

    def delete_host(self, args: Args, client: str) -> Reply:
        row = self.store.host_by_name(args.text("host")) if args.text("host") else None
        if row is None:
            raise CommandError("unknown_host")
        if any(d["hostid"] == row["hostid"] for d in self.store.devices()):
            raise CommandError("host_not_empty")
        self.store.delete_host(row["hostid"])
        return {}

    # -- devices ---------------------------------------------------------------------------

    def get_devices(self, args: Args, client: str) -> Reply:
        devs = list(self.state.topology.snapshot().values())
        if args.raw("devid"):
            devs = [d for d in devs if d.devid == args.int("devid")]
        reply: Reply = {"devices": len(devs)}
        for i, d in enumerate(devs, 1):
            p = f"dev{i}_"
            util = d.observed.utilization
            reply.update({
                p + "devid": d.devid, p + "hostid": d.hostid, p + "status": d.status,
                p + "weight": d.weight, p + "mb_total": d.mb_total, p + "mb_used": d.mb_used,
                p + "mb_free": d.mb_free, p + "mb_asof": None,
                p + "observed_state": d.observed.state or None,
                p + "utilization": f"{util:.1f}" if util is not None else None,
                p + "reject_bad_md5": 1 if d.observed.reject_bad_md5 else 0,
            })
        return reply

    def create_device(self, args: Args, client: str) -> Reply:
        state = args.text("state") or "alive"
        if state not in DEVICE_STATES:
            raise CommandError("invalid_state")
        if not re.fullmatch(r"\d+", args.text("devid")) or args.int("devid") < 1:
            raise CommandError("invalid_devid")
        host: Row | None
        if args.raw("hostid"):
            host = self.store.host(args.int("hostid"))
            if host is None:
                raise CommandError("unknown_hostid")
        elif args.raw("hostname"):
            host = self.store.host_by_name(args.text("hostname"))
            if host is None:
                raise CommandError("unknown_host")
        else:
            raise CommandError("bad_args", "No hostid/hostname parameter")
        try:
            self.store.create_device(args.int("devid"), host["hostid"], state)
        except Duplicate:
            raise CommandError("existing_devid") from None
        self._monitor([args.int("devid")])
        return {}

    def _device_for_host(self, args: Args) -> Row:
        devid = args.int("device")
        dev = self.store.device(devid) if devid else None
        if dev is None:
            raise CommandError("no_device")
        host = self.store.host(dev["hostid"])
        if host is None or host["hostname"] != args.text("host"):
            raise CommandError("host_mismatch")
        return dev

    def set_state(self, args: Args, client: str) -> Reply:
        state = args.text("state")
        if state not in DEVICE_STATES or not args.text("host") or not args.raw("device"):
            raise CommandError("bad_params")
        dev = self._device_for_host(args)
        if dev["status"] == "dead" and state == "alive":
            raise CommandError("state_too_high")
        self.store.update_device(dev["devid"], status=state)
        if state == "dead":
            self.state.replicate_wakeup.set()
        return {}

    def set_weight(self, args: Args, client: str) -> Reply:
        weight = args.int("weight")
        if weight < 0 or not args.text("host") or not args.raw("device"):
            raise CommandError("bad_params")
        dev = self._device_for_host(args)
        self.store.update_device(dev["devid"], weight=weight)
        return {}

    def _monitor(self, devids: list[int] | None) -> None:
        # Waits without killing: a round cut short could leave a database call half done.
        gevent.spawn(self.state.monitor_round, devids).join(MONITOR_WAIT_S)

    # -- server ----------------------------------------------------------------------------

    def test(self, args: Args, client: str) -> Reply:
        if args.flag("crash"):
            raise CommandError("failure")
        return {}

    def sleep(self, args: Args, client: str) -> Reply:
        duration = float(args.int("duration", 10)) if args.raw("duration") else 10.0
        gevent.sleep(min(max(duration, 0.0), SLEEP_MAX_S))
        return {}

    def do_monitor_round(self, args: Args, client: str) -> Reply:
        self._monitor(None)
        return {}

    def replicate_now(self, args: Args, client: str) -> Reply:
        count = self.store.replicate_now()
        self.state.replicate_wakeup.set()
        return {"count": count}

    def server_setting(self, args: Args, client: str) -> Reply:
        key = args.text("key")
        if not key:
            raise CommandError("bad_params")
        return {"key": key, "value": self.state.setting(key)}

    def server_settings(self, args: Args, client: str) -> Reply:
        items = sorted((k, v) for k, v in self.store.settings().items()
                       if not k.startswith("fsck_") or k == "fsck_checksum")
        reply: Reply = {"key_count": len(items)}
        for i, (k, v) in enumerate(items, 1):
            reply[f"key_{i}"] = k
            reply[f"value_{i}"] = v
        return reply

    def set_server_setting(self, args: Args, client: str) -> Reply:
        key, value = args.text("key"), args.text("value")
        if not key:
            raise CommandError("bad_params")
        rule = next((r for name, r in _WRITABLE
                     if key == name or (name.endswith("_") and key.startswith(name))), False)
        if rule is False:
            raise CommandError("not_writable")
        if isinstance(rule, re.Pattern):
            if rule is _NUM and value == "":
                value = "0"
            if not rule.match(value):
                raise CommandError("invalid_format", f"Invalid value {value!r} for {key}")
        self.store.set_setting(key, value)
        return {}


def uptime(state: TrackerState) -> int:
    return int(time.time() - state.started)
