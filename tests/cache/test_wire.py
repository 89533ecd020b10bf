"""get_multi's binary fast path: its hand-written encoding must be byte for byte what
Thrift's own encoder writes for the same items."""

from thrift.protocol.fastbinary import encode_binary

from glammp.cache.Cache import get_multi_result
from glammp.cache.ttypes import Item, ValueType
from services.cache.items import encode_item_list


def thrift_encoding(items: list[Item]) -> bytes:
    whole = encode_binary(get_multi_result(success=items),
                          [get_multi_result, get_multi_result.thrift_spec])
    # Field 0's header (type LIST, id 0) and the result struct's stop byte are not the value's.
    assert whole[:3] == b"\x0f\x00\x00" and whole[-1:] == b"\x00"
    return whole[3:-1]


def test_rows_encode_as_thrift_encodes_items() -> None:
    rows = [
        ("plain", True, b"value", 0, ValueType.STRING, 0, 17),
        ("miss", False, b"", 0, ValueType.STRING, 0, 0),
        ("clé-ünïcode", True, b"\x00\xff" * 300, 0, ValueType.STRING, 0, 2**63 - 1),
        ("typed", True, b"42", 0x20001, ValueType.LONG, 2, -5),
        ("", True, b"", 2**32 - 1, ValueType.MSGPACK, 65535, -(2**63)),
    ]
    as_items = [Item(*r) for r in rows]
    assert encode_item_list(rows) == thrift_encoding(as_items)  # type: ignore[arg-type]
    # Rows and Item objects mix (the general decoding path answers Items).
    mixed = [rows[0], as_items[3], rows[1]]
    assert encode_item_list(mixed) == thrift_encoding([as_items[0], as_items[3], as_items[1]])
    assert encode_item_list([]) == thrift_encoding([])
