"""services.core.binary: the same bytes as Thrift's C encoder, whichever encoder writes them."""

import os

from thrift.protocol import fastbinary

from glammp.cache.Cache import get_result
from glammp.cache.ttypes import Item, ValueType
from glammp.filestore.Filestore import store_args
from services.core.binary import LARGE_BINARY_BYTES, encode_binary, spec_holds_binary


def test_large_binaries_encode_as_the_c_encoder_does() -> None:
    big = os.urandom(LARGE_BINARY_BYTES + 1)
    cases = [
        store_args(domain="d", key="k", data=big, opts=None),  # top level, large
        store_args(domain="d", key="k", data=b"small", opts=None),  # the C encoder's case
        get_result(success=Item("k", True, big, 1, ValueType.LONG, 0, -3)),  # one level down
    ]
    for obj in cases:
        spec = [type(obj), type(obj).thrift_spec]
        assert encode_binary(obj, spec) == fastbinary.encode_binary(obj, spec)
    # A bytearray (which the C encoder refuses) is written as the same bytes would be.
    as_bytes = get_result(success=Item("k", True, big, 0, ValueType.STRING, 0, 0))
    as_array = get_result(success=Item("k", True, bytearray(big), 0, ValueType.STRING, 0, 0))
    spec = [get_result, get_result.thrift_spec]
    assert encode_binary(as_array, spec) == fastbinary.encode_binary(as_bytes, spec)


def test_which_results_can_hold_binary() -> None:
    assert spec_holds_binary(get_result.thrift_spec)  # Item.value
    assert spec_holds_binary(store_args.thrift_spec)
    from glammp.base.Base import getStatus_result
    assert not spec_holds_binary(getStatus_result.thrift_spec)
