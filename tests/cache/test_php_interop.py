"""The service and PHP (pecl/memcached, OPT_LIBKETAMA_COMPATIBLE) share one memcached pool:
same server for every key, same values and types, both ways."""

from __future__ import annotations

from typing import Any

import pytest

from glammp.cache.ttypes import Entry, ReadOptions, StoreResult, ValueType, WriteOptions
from services.cache.service import CacheHandler
from tests.cache.conftest import MakeHandler, php, raw_keys

N = 1000
KEYS = [f"key:{i}" for i in range(N)]


def php_request(servers: list[str], weights: list[int], op: str, **fields: Any) -> dict[str, Any]:
    options = fields.pop("options", {})
    return php({
        "servers": [[s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1]), w]
                    for s, w in zip(servers, weights, strict=True)],
        "options": {"distribution": "ketama", **options},
        "op": op,
        **fields,
    })


def assert_placed_by_ring(h: CacheHandler, servers: list[str], keys: list[str],
                          wire_prefix: str = "") -> None:
    """Each key is held by exactly the server the service's ring names (asked directly)."""
    held = {s: raw_keys(s, [wire_prefix + k for k in keys]) for s in servers}
    for k in keys:
        owner = h.server_for_key(k, None)
        address = f"{owner.host}:{owner.port}"
        assert [s for s in servers if wire_prefix + k in held[s]] == [address], k


@pytest.mark.parametrize("weights", [[1, 1, 1], [45, 46, 29]])
def test_php_writes_service_reads(servers: list[str], make_handler: MakeHandler,
                                  weights: list[int]) -> None:
    h = make_handler([f"{s}:{w}" for s, w in zip(servers, weights, strict=True)])
    ok = php_request(servers, weights, "set", items={k: f"v{i}" for i, k in enumerate(KEYS)})
    assert all(ok["ok"].values())
    items = h.get_multi(KEYS, None, True)
    assert [i.value for i in items] == [f"v{i}".encode() for i in range(N)]
    assert_placed_by_ring(h, servers, KEYS)


@pytest.mark.parametrize("weights", [[1, 1, 1], [5, 1, 3]])
def test_service_writes_php_reads(servers: list[str], make_handler: MakeHandler,
                                  weights: list[int]) -> None:
    h = make_handler([f"{s}:{w}" for s, w in zip(servers, weights, strict=True)])
    result = h.put_multi([Entry(key=k, value=b"s%d" % i) for i, k in enumerate(KEYS)], None)
    assert set(result.values()) == {StoreResult.STORED}
    got = php_request(servers, weights, "get_multi", keys=KEYS)
    assert got["found"] == N and got["keys"] == KEYS
    assert_placed_by_ring(h, servers, KEYS)


@pytest.mark.parametrize("removed", [0, 2])
def test_one_server_removed_from_both_lists(servers: list[str], make_handler: MakeHandler,
                                            removed: int) -> None:
    kept = [s for i, s in enumerate(servers) if i != removed]
    weights = [3, 2]
    h = make_handler([f"{s}:{w}" for s, w in zip(kept, weights, strict=True)])
    ok = php_request(kept, weights, "set", items={k: "p" for k in KEYS[:500]})
    assert all(ok["ok"].values())
    h.put_multi([Entry(key=k, value=b"s") for k in KEYS[500:]], None)
    assert php_request(kept, weights, "get_multi", keys=KEYS)["found"] == N
    assert sum(i.found for i in h.get_multi(KEYS, None, True)) == N
    assert not raw_keys(servers[removed], KEYS)
    assert_placed_by_ring(h, kept, KEYS)


@pytest.mark.parametrize("hash_with_prefix", [False, True])
def test_prefix_with_and_without_hashing(servers: list[str], make_handler: MakeHandler,
                                         hash_with_prefix: bool) -> None:
    h = make_handler(servers, prefix="app1:", hash_with_prefix=hash_with_prefix)
    options = {"prefix": "app1:", "hash_with_prefix": hash_with_prefix}
    keys = KEYS[:400]
    php_request(servers, [1, 1, 1], "set", items={k: "x" for k in keys}, options=options)
    assert sum(i.found for i in h.get_multi(keys, None, True)) == len(keys)
    assert_placed_by_ring(h, servers, keys, wire_prefix="app1:")
    h.remove_multi(keys, None)
    h.put_multi([Entry(key=k, value=b"y") for k in keys], None)
    got = php_request(servers, [1, 1, 1], "get_multi", keys=keys, options=options)
    assert got["found"] == len(keys)


PHP_VALUES = [
    # key, php type to write, text, expected flags, expected stored bytes
    ("s", "string", "hello", 0, b"hello"),
    ("l", "long", "-7", 1, b"-7"),
    ("d", "double", "3.14", 2, b"3.14"),
    ("d2", "double", "0.1", 2, b".1"),  # pecl drops the leading zero
    ("lmin", "long", "-9223372036854775808", 1, b"-9223372036854775808"),
    ("t", "bool", "1", 3, b"1"),
    ("f", "bool", "", 3, b""),
    ("n", "null", "", 4, b"N;"),
    ("a", "array_json", '{"a":1}', 4, b'a:1:{s:1:"a";i:1;}'),
]


def test_php_values_read_with_flags(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    out = php_request(servers, [1, 1, 1], "set_typed",
                      items=[[k, t, text] for k, t, text, _, _ in PHP_VALUES])
    assert all(out["ok"].values())
    for key, _, _, flags, stored in PHP_VALUES:
        item = h.get(key, None)
        assert (item.flags, item.type, item.value) == (flags, flags & 0xF, stored), key


@pytest.mark.parametrize("kind,flags", [("fastlz", 0x50), ("zlib", 0x30)])
def test_php_compressed_values(servers: list[str], make_handler: MakeHandler,
                               kind: str, flags: int) -> None:
    h = make_handler(servers)
    small = "abc" * 1000
    big = "".join(f"line {i} of a long text\n" for i in range(8000))  # > 64 KiB: fastlz level 2
    php_request(servers, [1, 1, 1], "set_typed", items=[["c1", "string", small],
                                                       ["c2", "string", big],
                                                       ["c3", "long", "1" * 18]],
                options={"compression": True, "compression_type": kind})
    for key, text in (("c1", small), ("c2", big)):
        item = h.get(key, None)
        assert item.flags == flags and item.value == text.encode()
        raw = h.get(key, ReadOptions(decompress=False))
        assert len(raw.value) < len(text) and raw.flags == flags
    assert h.get("c3", None).value == b"1" * 18  # below the threshold: raw


SERVICE_VALUES = [
    ("s", b"hello", ValueType.STRING, "'hello'"),
    ("l", b"-42", ValueType.LONG, "-42"),
    ("d", b"2.5", ValueType.DOUBLE, "2.5"),
    ("t", b"1", ValueType.BOOL, "true"),
    ("f", b"", ValueType.BOOL, "false"),
    ("a", b'a:2:{i:0;s:1:"x";s:1:"k";d:1.5;}', ValueType.SERIALIZED,
     "array (\n  0 => 'x',\n  'k' => 1.5,\n)"),
    ("n", b"N;", ValueType.SERIALIZED, "NULL"),
    ("j", b'{"a":1}', ValueType.JSON, "(object) array(\n   'a' => 1,\n)"),
    ("lmax", b"9223372036854775807", ValueType.LONG, "9223372036854775807"),
    ("e", b"1e3", ValueType.DOUBLE, "1000.0"),
]


def test_service_values_read_by_php(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers)
    for key, value, vtype, _ in SERVICE_VALUES:
        h.put(key, value, WriteOptions(type=vtype))
    text = "".join(f"row {i};" for i in range(3000))
    h.put("zf", text.encode(), WriteOptions(compress=True))
    h.put("big", (text * 10).encode(), WriteOptions(compress=True))
    got = php_request(servers, [1, 1, 1], "get",
                      keys=[k for k, _, _, _ in SERVICE_VALUES] + ["zf", "big"])["values"]
    for key, _, _, php_repr in SERVICE_VALUES:
        assert got[key]["found"] and got[key]["repr"] == php_repr, key
    assert got["zf"]["repr"] == f"'{text}'"
    assert got["big"]["repr"] == f"'{text * 10}'"
    assert h.get("zf", ReadOptions(decompress=False)).flags == 0x50


def test_service_zlib_values_read_by_php(servers: list[str], make_handler: MakeHandler) -> None:
    h = make_handler(servers, compression=True, compression_type="zlib")
    text = "zlib text " * 800
    h.put("zl", text.encode(), None)
    assert h.get("zl", ReadOptions(decompress=False)).flags == 0x30
    got = php_request(servers, [1, 1, 1], "get", keys=["zl"])["values"]
    assert got["zl"]["repr"] == f"'{text}'"
