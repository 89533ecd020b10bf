"""The MogileFS tracker line protocol: request parsing and reply encoding, as 2.73 does it.

A request is one line, `<command>[ <args>]`, ended by `\\n` or `\\r\\n`. The command is the
leading run of word characters (`[A-Za-z0-9_]`), lower-cased; whatever follows, with or without
a space, is a form-encoded argument string. A reply is one line: `OK <args>\\r\\n` or
`ERR <code> <text>\\r\\n`, both argument maps and texts encoded with `eurl`.

Everything here is pure: no sockets, no I/O. Values are bytes, because MogileFS keys are
arbitrary byte strings; `Args.text()` decodes a value as UTF-8 for names (domains, classes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: Bytes `eurl` leaves alone; every other byte becomes `%XX` (then space becomes `+`).
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_,-./\\: ")
_ESCAPE = {b: (chr(b) if b in _SAFE else f"%{b:02X}").replace(" ", "+") for b in range(256)}
_COMMAND = re.compile(rb"^\s*(\w+)\s*(.*)$", re.DOTALL)
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")

#: Texts the real tracker sends for these error codes; any other code is echoed as its text.
ERROR_TEXTS: Mapping[str, str] = {
    "dup": "Duplicate name/number used.",
    "after_mismatch": "Pattern does not match the after-value?",
    "bad_params": "Invalid parameters to command; please see documentation",
    "class_exists": "That class already exists in that domain",
    "class_has_files": "Class still has files, unable to delete",
    "class_not_found": "Class not found",
    "db": "Database error",
    "domain_has_files": "Domain still has files, unable to delete",
    "domain_exists": "That domain already exists",
    "domain_not_empty": "Domain still has classes, unable to delete",
    "domain_not_found": "Domain not found",
    "failure": "Operation failed",
    "host_exists": "That host already exists",
    "host_mismatch": "The device specified doesn't belong to the host specified",
    "host_not_empty": "Unable to delete host; it contains devices still",
    "host_not_found": "Host not found",
    "invalid_checker_level": "Checker level invalid.  Please see documentation on this command.",
    "invalid_mindevcount": "The mindevcount must be at least 1",
    "key_exists": "Target key name already exists; can't overwrite.",
    "no_class": "No class provided",
    "no_devices": "No devices found to store file",
    "no_device": "Device not found",
    "no_domain": "No domain provided",
    "no_host": "No host provided",
    "no_ip": "IP required to create host",
    "no_port": "Port required to create host",
    "no_temp_file": "No tempfile or file already closed",
    "none_match": "No keys match that pattern and after-value (if any).",
    "plugin_aborted": "Action aborted by plugin",
    "state_too_high": "Status cannot go from dead to alive; must use down",
    "unknown_command": "Unknown server command",
    "unknown_host": "Host not found",
    "unknown_state": "Invalid/unknown state",
    "unreg_domain": "Domain name invalid/not found",
    "rebal_not_started": "Rebalance not running",
    "no_rebal_state": "No available rebalance status",
    "no_rebal_policy": "No rebalance policy available",
    "nodel_default_class": "Cannot delete the default class",
}


class Args:
    """The decoded arguments of one request: name → value bytes (missing means empty)."""

    def __init__(self, pairs: Mapping[str, bytes]) -> None:
        self._pairs = dict(pairs)

    def raw(self, name: str) -> bytes:
        """The value as bytes; b"" when absent."""
        return self._pairs.get(name, b"")

    def text(self, name: str) -> str:
        """The value decoded as UTF-8 (undecodable bytes kept as surrogates); "" when absent."""
        return self.raw(name).decode("utf-8", "surrogateescape")

    def has(self, name: str) -> bool:
        return name in self._pairs

    def flag(self, name: str) -> bool:
        """MogileFS truth: absent, empty and "0" are false."""
        return self.raw(name) not in (b"", b"0")

    def int(self, name: str, default: int = 0) -> int:
        """The leading integer of the value (Perl numeric context); `default` when none."""
        m = re.match(rb"\s*([+-]?\d+)", self.raw(name))
        return int(m.group(1)) if m else default

    def items(self) -> Iterable[tuple[str, bytes]]:
        return self._pairs.items()

    def __repr__(self) -> str:
        return f"Args({self._pairs!r})"


def unescape(data: bytes) -> bytes:
    """`+` → space, then `%XX` → byte; invalid escapes such as `%ZZ` stay literal."""
    return _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), data.replace(b"+", b" "))


def parse_args(data: bytes) -> Args:
    """Decodes an argument string the way the tracker's query worker does.

    Split on `&`; pairs that are empty or exactly `0` are dropped; each pair keeps only its first
    two `=` fields; names and values are unescaped; a repeated name joins its values with NUL.
    """
    pairs: dict[str, bytes] = {}
    for pair in data.split(b"&"):
        if pair in (b"", b"0"):
            continue
        fields = pair.split(b"=")
        name = unescape(fields[0]).decode("utf-8", "surrogateescape")
        value = unescape(fields[1]) if len(fields) > 1 else b""
        pairs[name] = pairs[name] + b"\0" + value if name in pairs else value
    return Args(pairs)


def parse_line(line: bytes) -> tuple[str, Args] | None:
    """Splits a request line (without its line end) into (command, args); None for garbage."""
    m = _COMMAND.match(line)
    if m is None:
        return None
    return m.group(1).decode("ascii").lower(), parse_args(m.group(2))


def eurl(value: bytes | str | int) -> str:
    """Encodes a reply value: bytes outside `[A-Za-z0-9_,\\-./\\\\: ]` as `%XX`, space as `+`."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return "".join(_ESCAPE[b] for b in value)


Reply = Mapping[str, bytes | str | int | None]


def encode_ok(values: Reply, callid: bytes | None = None) -> bytes:
    """`OK <k=v&…>\\r\\n`; None values are sent as `k=`; `callid` is added when given."""
    pairs = [f"{eurl(k)}={eurl(v) if v is not None else ''}" for k, v in values.items()]
    if callid is not None:
        pairs.append(f"callid={eurl(callid)}")
    return ("OK " + "&".join(pairs) + "\r\n").encode("ascii")


def encode_err(code: str, text: str | None = None, callid: bytes | None = None) -> bytes:
    """`ERR <code> <eurl text>[ <eurl callid>]\\r\\n`; text defaults to the code's table text."""
    message = text if text is not None else ERROR_TEXTS.get(code, code)
    line = f"ERR {code} {eurl(message)}"
    if callid is not None:
        line += f" {eurl(callid)}"
    return (line + "\r\n").encode("ascii")


def decode_reply(line: bytes) -> tuple[bool, dict[str, bytes] | tuple[str, str]]:
    """Client side, for tests and tools: (True, args) for OK, (False, (code, text)) for ERR."""
    line = line.rstrip(b"\r\n")
    if line.startswith(b"OK"):
        args = parse_args(line[3:])
        return True, dict(args.items())
    parts = line.split(b" ", 2)
    code = parts[1].decode() if len(parts) > 1 else ""
    text = unescape(parts[2]).decode("utf-8", "replace") if len(parts) > 2 else ""
    return False, (code, text)
