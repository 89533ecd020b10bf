"""FastLZ, the compression format pecl/memcached uses by default (``COMPRESSION_FASTLZ``).

Written from the format, not from FastLZ's source. A stream is a sequence of instructions;
the top three bits of the first byte say the level (0 → level 1, 1 → level 2), the first
instruction is always a literal run, and each instruction starts with a control byte:

- ``000nnnnn``: a literal run of ``n + 1`` bytes (1–32) follows.
- ``lllhhhhh``, ``lll`` ≠ 0: a match copying bytes from earlier output. ``lll`` < 7 means
  length ``lll + 2``; ``lll`` = 7 means more length bytes follow (level 1: one byte, length
  ``9 + b``; level 2: bytes of 255 continue, the first byte < 255 ends, length ``9 + sum``).
  Then one byte ``d``: the distance back is ``(hhhhh << 8 | d) + 1``. In level 2 the pair
  ``hhhhh = 31, d = 255`` instead announces a 16-bit big-endian ``x`` and distance
  ``x + 8192``.

pecl compresses inputs shorter than 64 KiB with level 1 and longer ones with level 2; both
levels decompress here. The compressor is greedy with a 3-byte hash table; its output is
valid FastLZ (PHP reads it) but not byte-identical to the C library's, which nothing needs.
Pure Python: about a few MB/s on compressible data, so `compress` callers should skip data
that will not compress (`codec` checks with zlib first).
"""

from __future__ import annotations

#: Level-1 and near level-2 matches reach back at most this many bytes.
MAX_NEAR_DISTANCE_1 = 8192
MAX_NEAR_DISTANCE_2 = 8191
#: Level-2 far matches reach back at most this many bytes.
MAX_FAR_DISTANCE_2 = 65535 + 8192
#: Longest level-1 match (longer matches are split).
MAX_LEN_1 = 264
#: Longest literal run one control byte announces.
MAX_LITERAL = 32
#: Inputs at least this long are compressed with level 2, as pecl's fastlz_compress does.
LEVEL2_FROM = 65536


class FastLZError(ValueError):
    """The stream is not valid FastLZ (truncated, or a match reaches before the start)."""


def decompress(data: bytes, max_output: int) -> bytes:
    """Decompresses a level-1 or level-2 stream; FastLZError when it is corrupt or would
    exceed `max_output` bytes."""
    if not data:
        return b""
    level = (data[0] >> 5) + 1
    if level not in (1, 2):
        raise FastLZError(f"unknown FastLZ level {level}")
    out = bytearray()
    n = len(data)
    ip = 1
    ctrl = data[0] & 31
    try:
        while True:
            if ctrl < 32:
                run = ctrl + 1
                if ip + run > n:
                    raise FastLZError("literal run past the end of the stream")
                out += data[ip : ip + run]
                ip += run
            else:
                length = (ctrl >> 5) + 2
                high = (ctrl & 31) << 8
                if length == 9:
                    if level == 1:
                        length += data[ip]
                        ip += 1
                    else:
                        while True:
                            code = data[ip]
                            ip += 1
                            length += code
                            if code != 255:
                                break
                low = data[ip]
                ip += 1
                distance = high + low + 1
                if level == 2 and low == 255 and high == 31 << 8:
                    distance = (data[ip] << 8) + data[ip + 1] + 8192
                    ip += 2
                start = len(out) - distance
                if start < 0:
                    raise FastLZError("match reaches before the start of the output")
                if distance >= length:
                    out += out[start : start + length]
                else:
                    pattern = bytes(out[start:])
                    out += (pattern * (length // distance + 1))[:length]
            if len(out) > max_output:
                raise FastLZError(f"output exceeds {max_output} bytes")
            if ip >= n:
                break
            ctrl = data[ip]
            ip += 1
    except IndexError:
        raise FastLZError("stream ends inside an instruction") from None
    return bytes(out)


def _match_length(data: bytes, ref: int, pos: int, limit: int) -> int:
    """Length of the common run of data[ref:] and data[pos:], at most `limit`; found with
    slice comparisons (exponential then binary search) instead of a byte loop."""
    if data[ref : ref + 3] != data[pos : pos + 3]:
        return 0
    lo, step = 3, 8
    while lo < limit:
        hi = min(lo + step, limit)
        if data[ref + lo : ref + hi] == data[pos + lo : pos + hi]:
            lo = hi
            step *= 2
            continue
        # The mismatch is inside (lo, hi): binary search for the longest equal prefix.
        a, b = lo, hi
        while b - a > 1:
            mid = (a + b) // 2
            if data[ref + lo : ref + mid] == data[pos + lo : pos + mid]:
                a = mid
            else:
                b = mid
        return a
    return lo


def compress(data: bytes, level: int | None = None) -> bytes:
    """Compresses `data` into a FastLZ stream (level 1 below 64 KiB, level 2 above, unless
    `level` is given). Empty input gives empty output."""
    n = len(data)
    if n == 0:
        return b""
    if level is None:
        level = 1 if n < LEVEL2_FROM else 2
    if level not in (1, 2):
        raise ValueError("FastLZ level must be 1 or 2")
    max_distance = MAX_NEAR_DISTANCE_1 if level == 1 else MAX_FAR_DISTANCE_2
    out = bytearray()
    table: dict[bytes, int] = {}
    anchor = 0
    pos = 0
    last = n - 3

    def flush_literals(end: int) -> None:
        start = anchor
        while start < end:
            run = min(MAX_LITERAL, end - start)
            out.append(run - 1)
            out.extend(data[start : start + run])
            start += run

    while pos <= last:
        key = data[pos : pos + 3]
        ref = table.get(key)
        table[key] = pos
        if ref is None or pos - ref > max_distance:
            pos += 1
            continue
        limit = n - pos if level == 2 else min(n - pos, MAX_LEN_1)
        length = _match_length(data, ref, pos, limit)
        if length < 3:
            pos += 1
            continue
        flush_literals(pos)
        _emit_match(out, level, length, pos - ref)
        pos += length
        anchor = pos
        # Index the last positions of the match so runs keep finding each other.
        for p in (pos - 2, pos - 1):
            if p <= last:
                table[data[p : p + 3]] = p
    flush_literals(n)
    if level == 2:
        out[0] |= 1 << 5
    return bytes(out)


def _emit_match(out: bytearray, level: int, length: int, distance: int) -> None:
    far = level == 2 and distance > MAX_NEAR_DISTANCE_2
    d = distance - 1
    high = 31 if far else d >> 8
    low = 255 if far else d & 255
    if length < 9:
        out.append(((length - 2) << 5) | high)
    else:
        out.append((7 << 5) | high)
        rest = length - 9
        if level == 1:
            out.append(rest)
        else:
            while rest >= 255:
                out.append(255)
                rest -= 255
            out.append(rest)
    out.append(low)
    if far:
        x = distance - 8192
        out.append(x >> 8)
        out.append(x & 255)
