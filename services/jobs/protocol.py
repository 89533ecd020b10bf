"""The Gearman wire protocols: binary packets and the admin text protocol, with no I/O.

Binary framing (both directions): a 12-byte header, `magic(4) type(4) size(4)` with big-endian
integers, then `size` bytes of arguments separated by NUL. Requests carry the magic `\\0REQ`,
responses `\\0RES`. Each packet type has a fixed argument count; the last argument runs to the end
of the body and may itself contain NUL bytes (workloads and results are binary).

`PacketReader` turns a byte stream into `Packet`s incrementally and raises `ProtocolError` on a
bad magic or a body over `max_body_bytes`; after that the stream is out of sync and the
connection must be closed. `encode()` builds one packet.

The admin protocol shares the port: a line of text in, lines out. List replies (`status`,
`workers`, `prioritystatus`) end with a line holding a single `.`; one-line replies start with
`OK` or `ERR`. gearmand 1.1.20 mixes `\\n` and `\\r\\n`, so the parsers accept both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_BYTES = HEADER.size

#: Largest packet body accepted from a peer, in bytes (a workload or result plus its handle).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: gearmand rejects uniques longer than this (`ARGUMENT_TOO_LARGE`), in bytes.
MAX_UNIQUE_BYTES = 64

# Packet types, numbered as in libgearman-1.0/protocol.h.
CAN_DO = 1
CANT_DO = 2
RESET_ABILITIES = 3
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20
SUBMIT_JOB_HIGH = 21
SET_CLIENT_ID = 22
WORK_EXCEPTION = 25
OPTION_REQ = 26
OPTION_RES = 27
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW = 33
SUBMIT_JOB_LOW_BG = 34
GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42

#: How many NUL-separated arguments each packet type has (the last one may contain NULs).
ARG_COUNT: dict[int, int] = {
    CAN_DO: 1,
    CANT_DO: 1,
    RESET_ABILITIES: 0,
    PRE_SLEEP: 0,
    NOOP: 0,
    SUBMIT_JOB: 3,
    SUBMIT_JOB_BG: 3,
    SUBMIT_JOB_HIGH: 3,
    SUBMIT_JOB_HIGH_BG: 3,
    SUBMIT_JOB_LOW: 3,
    SUBMIT_JOB_LOW_BG: 3,
    JOB_CREATED: 1,
    GRAB_JOB: 0,
    GRAB_JOB_UNIQ: 0,
    NO_JOB: 0,
    JOB_ASSIGN: 3,
    JOB_ASSIGN_UNIQ: 4,
    WORK_STATUS: 3,
    WORK_COMPLETE: 2,
    WORK_FAIL: 1,
    WORK_EXCEPTION: 2,
    WORK_DATA: 2,
    WORK_WARNING: 2,
    GET_STATUS: 1,
    STATUS_RES: 5,
    GET_STATUS_UNIQUE: 1,
    STATUS_RES_UNIQUE: 6,
    ECHO_REQ: 1,
    ECHO_RES: 1,
    ERROR: 2,
    OPTION_REQ: 1,
    OPTION_RES: 1,
    SET_CLIENT_ID: 1,
}

#: The SUBMIT packet for (priority, background); priority 0 = normal, 1 = high, 2 = low,
#: the values of the IDL's `Priority`.
SUBMIT_TYPES: dict[tuple[int, bool], int] = {
    (0, False): SUBMIT_JOB,
    (1, False): SUBMIT_JOB_HIGH,
    (2, False): SUBMIT_JOB_LOW,
    (0, True): SUBMIT_JOB_BG,
    (1, True): SUBMIT_JOB_HIGH_BG,
    (2, True): SUBMIT_JOB_LOW_BG,
}


class ProtocolError(Exception):
    """The peer sent bytes that are not the Gearman protocol (bad magic, oversized body,
    wrong argument count). The stream cannot be trusted after this: close the connection."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet: its type and its arguments (all bytes)."""

    type: int
    args: tuple[bytes, ...]

    def arg(self, i: int) -> bytes:
        return self.args[i] if i < len(self.args) else b""


def encode(ptype: int, *args: bytes, magic: bytes = REQ) -> bytes:
    """One packet. Only the last argument may contain NUL bytes; `ValueError` otherwise."""
    for a in args[:-1]:
        if b"\0" in a:
            raise ValueError(f"packet {ptype}: NUL inside a non-final argument")
    body = b"\0".join(args)
    return HEADER.pack(magic, ptype, len(body)) + body


def split_args(ptype: int, body: bytes) -> tuple[bytes, ...]:
    """Splits a body into the type's argument count; unknown types keep the body whole.

    A body with fewer separators than expected yields the missing arguments as b"" — gearmand
    sends `WORK_FAIL` as `handle\\0` (a trailing NUL) to clients without the exceptions option,
    and that must decode to the handle alone.
    """
    n = ARG_COUNT.get(ptype, 1)
    if n == 0:
        return ()
    parts = body.split(b"\0", n - 1)
    if ptype == WORK_FAIL:
        parts[0] = parts[0].rstrip(b"\0")
    while len(parts) < n:
        parts.append(b"")
    return tuple(parts)


class PacketReader:
    """Incremental decoder: `feed()` bytes as they arrive, get complete packets back.

    `expect` is the magic the peer must send (`RES` on a client or worker, `REQ` on a server).
    """

    def __init__(self, expect: bytes = RES, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.expect = expect
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """Adds `data`; returns the packets completed by it, in order.

        Raises `ProtocolError` on a wrong magic or a body larger than `max_body_bytes`.
        """
        self._buf += data
        out: list[Packet] = []
        while len(self._buf) >= HEADER_BYTES:
            magic, ptype, size = HEADER.unpack_from(self._buf, 0)
            if magic != self.expect:
                raise ProtocolError(f"bad magic {bytes(magic)!r}, expected {self.expect!r}")
            if size > self.max_body_bytes:
                raise ProtocolError(f"packet body of {size} bytes over {self.max_body_bytes}")
            end = HEADER_BYTES + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER_BYTES:end])
            del self._buf[:end]
            out.append(Packet(ptype, split_args(ptype, body)))
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buf)


# --- admin text protocol ---------------------------------------------------------------


@dataclass(frozen=True)
class FunctionLine:
    """One line of `status`: jobs queued or running (`total`), running, capable workers."""

    name: str
    total: int
    running: int
    workers: int


@dataclass(frozen=True)
class PriorityLine:
    """One line of `prioritystatus`: queued (not running) jobs per priority, and workers."""

    name: str
    high: int
    normal: int
    low: int
    workers: int


@dataclass(frozen=True)
class WorkerLine:
    """One line of `workers`: a connection's fd, peer IP, client id (`-` = none), functions."""

    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]


def admin_lines(reply: bytes) -> list[str] | None:
    """The lines of a complete list reply without the final `.`; None while incomplete.

    Accepts `\\n` and `\\r\\n` endings. A reply that is a single `ERR ...` line is returned as
    that one line so callers can report it.
    """
    text = reply.decode("utf-8", "replace").replace("\r\n", "\n")
    if text.startswith("ERR ") and text.endswith("\n"):
        return [text.rstrip("\n")]
    if not (text == ".\n" or text.endswith("\n.\n")):
        return None
    return text[:-2].split("\n")[:-1] if text != ".\n" else []


def admin_line_complete(reply: bytes) -> bool:
    """Whether a one-line reply (`OK ...` / `ERR ...`) has fully arrived."""
    return reply.endswith(b"\n")


def parse_status(lines: list[str]) -> list[FunctionLine]:
    """`status` lines → FunctionLine; `ProtocolError` on a malformed line."""
    out = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 4:
            raise ProtocolError(f"bad status line {line!r}")
        try:
            out.append(FunctionLine(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        except ValueError:
            raise ProtocolError(f"bad status line {line!r}") from None
    return out


def parse_priority_status(lines: list[str]) -> list[PriorityLine]:
    """`prioritystatus` lines → PriorityLine; `ProtocolError` on a malformed line."""
    out = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 5:
            raise ProtocolError(f"bad prioritystatus line {line!r}")
        try:
            nums = [int(p) for p in parts[1:]]
        except ValueError:
            raise ProtocolError(f"bad prioritystatus line {line!r}") from None
        out.append(PriorityLine(parts[0], *nums))
    return out


def parse_workers(lines: list[str]) -> list[WorkerLine]:
    """`workers` lines (`FD IP CLIENT_ID : fn fn ...`) → WorkerLine."""
    out = []
    for line in lines:
        # Split on whitespace rather than ':' so that IPv6 peers (`::1`) parse too.
        fields = line.split()
        if len(fields) < 4 or fields[3] != ":":
            raise ProtocolError(f"bad workers line {line!r}")
        try:
            fd = int(fields[0])
        except ValueError:
            raise ProtocolError(f"bad workers line {line!r}") from None
        out.append(WorkerLine(fd, fields[1], fields[2], tuple(fields[4:])))
    return out
