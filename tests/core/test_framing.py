"""THeader frames, decoded and encoded without a server."""

from __future__ import annotations

import struct
import zlib

import pytest

from services.core import framing


def _frame(payload: bytes, headers: dict[str, str], transforms: list[int], proto: int) -> bytes:
    head = bytearray([proto, len(transforms), *transforms])
    if headers:
        head += bytes([1, len(headers)])
        for k, v in headers.items():
            head += bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode()
    head += b"\x00" * (-len(head) % 4)
    if transforms:
        payload = zlib.compress(payload)
    return b"\x0f\xff" + struct.pack(">HiH", 0, 7, len(head) // 4) + bytes(head) + payload


def test_decode_and_answer_in_kind():
    raw = _frame(b"\x80\x01payload", {"Deadline-Budget": "250"}, [1], 0)
    frame = framing.decode_header_frame(raw, 1 << 20)
    assert frame.payload == b"\x80\x01payload"
    assert frame.headers == {"Deadline-Budget": "250"}
    assert (frame.seqid, frame.protocol, frame.transforms) == (7, 0, [1])
    reply = framing.encode_header_frame(frame, b"\x80\x01reply")
    again = framing.decode_header_frame(reply[4:], 1 << 20)
    assert struct.unpack(">i", reply[:4])[0] == len(reply) - 4
    assert (again.payload, again.seqid, again.transforms) == (b"\x80\x01reply", 7, [1])


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0f\xff\x00",  # too short
        b"\x0f\xff" + struct.pack(">HiH", 0, 1, 50) + b"\x00" * 8,  # header past the frame
        _frame(b"x", {}, [9], 0),  # unknown transform
        _frame(b"x", {}, [], 5),  # unknown protocol
    ],
)
def test_bad_frames_raise_framing_error(raw):
    with pytest.raises(framing.FramingError):
        framing.decode_header_frame(raw, 1 << 20)


def test_zlib_bomb_is_refused():
    raw = _frame(b"\x00" * (4 << 20), {}, [1], 0)
    with pytest.raises(framing.FramingError):
        framing.decode_header_frame(raw, 1 << 20)
