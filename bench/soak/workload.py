"""What the soak writes: self-describing cache values, file contents and job ids.

Every value the drivers write can be validated by anyone who reads it, without asking the
writer: a cache value names its key, its writer and the writer's sequence number, followed
by filler derived from those three, so a torn value (cut, spliced or belonging to another
key) does not parse. File contents and foreground-job workloads are functions of their key,
so a reader recomputes what it should have got.
"""

from __future__ import annotations

import hashlib

#: Cache keys shared by every driver, so that writers race on the same keys.
CACHE_KEYS = 200
#: Shortest and longest cache value filler, in bytes.
CACHE_FILLER_MIN = 16
CACHE_FILLER_SPAN = 400
#: Smallest file and the spread of file sizes above it, in bytes.
FILE_MIN_BYTES = 100
FILE_SPAN_BYTES = 16_000
#: The Gearman functions the soak's workers serve (bench.soak.jobfuncs).
RECORD_FUNCTION = "soak_record"
ECHO_FUNCTION = "soak_echo"


def cache_key(n: int) -> str:
    return f"soak:k{n % CACHE_KEYS}"


def _filler(prefix: str, length: int) -> str:
    seed = hashlib.sha256(prefix.encode()).hexdigest()
    return (seed * (length // len(seed) + 1))[:length]


def cache_value(key: str, writer: str, seq: int) -> bytes:
    """`key|writer|seq|filler`: ASCII, 16–415 bytes of filler depending on `seq`."""
    prefix = f"{key}|{writer}|{seq}|"
    return (prefix + _filler(prefix, CACHE_FILLER_MIN + seq % CACHE_FILLER_SPAN)).encode()


def parse_cache_value(key: str, raw: bytes) -> tuple[str, int] | None:
    """(writer, seq) of a value written for `key` by `cache_value`; None when the bytes are
    not exactly such a value (torn, foreign key, garbage)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split("|")
    if len(parts) != 4 or parts[0] != key or not parts[2].isdigit():
        return None
    writer, seq = parts[1], int(parts[2])
    return (writer, seq) if cache_value(key, writer, seq) == raw else None


def file_data(key: str) -> bytes:
    """The content a driver stores under file `key`: 100–16,099 pseudo-random bytes."""
    digest = hashlib.sha256(key.encode()).digest()
    size = FILE_MIN_BYTES + int.from_bytes(digest[:4], "big") % FILE_SPAN_BYTES
    return hashlib.shake_256(key.encode()).digest(size)


def echo_workload(unique: str) -> bytes:
    """A foreground job's workload; the echo function answers it unchanged."""
    return f"echo:{unique}".encode() + hashlib.sha256(unique.encode()).digest()
