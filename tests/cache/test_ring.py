"""The ring: libmemcached's hashes and continuum, checked in pure Python and against PHP's
pecl/memcached `getServerByKey` (no memcached needed: placement is computed client-side)."""

from __future__ import annotations

import random

import pytest

from services.cache.ring import (
    Node,
    Ring,
    md5_hash,
    one_at_a_time,
    weighted_points,
)
from tests.cache.conftest import php

KEYS = [f"key:{i}" for i in range(1500)] + [f"ü-{i}-日本" for i in range(200)] + [
    "k" * n for n in (1, 2, 100, 249, 250)
]


def php_servers(nodes: list[Node], keys: list[str], **options: object) -> list[str]:
    request = {
        "servers": [[n.host, n.port, n.weight] for n in nodes],
        "options": options,
        "op": "server_by_key",
        "keys": keys,
    }
    result: list[str] = php(request)["servers"]
    return result


def test_weighted_points_use_float32() -> None:
    # Double precision would give 116 for the third server and misplace keys.
    assert [weighted_points(w, 120, 3) for w in (45, 46, 29)] == [180, 184, 112]
    assert [weighted_points(w, 6, 3) for w in (1, 2, 3)] == [80, 160, 240]
    assert weighted_points(1, 3, 3) == 160


def test_one_at_a_time_sign_extends_high_bytes() -> None:
    assert one_at_a_time(b"hello") == 0xC8FD181B
    # A byte >= 0x80 is added as a negative char; an unsigned port gives a different hash.
    assert one_at_a_time(b"\xc3") != one_at_a_time(b"\x43")
    unsigned = 0
    for b in b"\xc3":
        unsigned = (unsigned + b) & 0xFFFFFFFF
        unsigned = (unsigned + (unsigned << 10)) & 0xFFFFFFFF
        unsigned ^= unsigned >> 6
    unsigned = (unsigned + (unsigned << 3)) & 0xFFFFFFFF
    unsigned ^= unsigned >> 11
    unsigned = (unsigned + (unsigned << 15)) & 0xFFFFFFFF
    assert one_at_a_time(b"\xc3") != unsigned


def test_md5_hash_is_little_endian_first_word() -> None:
    assert md5_hash(b"") == 0xD98C1DD4  # md5("") = d41d8cd9...


def test_point_counts_and_port_11211_labels() -> None:
    ring = Ring([Node("a", 11211), Node("b", 11211), Node("c", 11211)])
    assert sorted(ring.point_counts().values()) == [160, 160, 160]
    weighted = Ring([Node("h", 1, 45), Node("h", 2, 46), Node("h", 3, 29)])
    assert weighted.point_counts() == {"h:1": 180, "h:2": 184, "h:3": 112}
    assert Ring([Node("h", 1), Node("h", 2)], "consistent").point_counts() == {
        "h:1": 100, "h:2": 100,
    }


def test_single_server_shortcut_and_modula() -> None:
    assert Ring([Node("h", 1)]).index_for(b"anything") == 0
    ring = Ring([Node("h", 1), Node("h", 2), Node("h", 3)], "modula")
    for key in (b"a", b"bb", b"key:7"):
        assert ring.index_for(key) == one_at_a_time(key) % 3


def test_removing_a_server_moves_only_its_keys() -> None:
    nodes = [Node("127.0.0.1", 17201 + i) for i in range(3)]
    full = Ring(nodes)
    for dead in range(3):
        live = [i for i in range(3) if i != dead]
        rebuilt = Ring(nodes, "ketama", live)
        moved = 0
        for i in range(3000):
            key = f"key:{i}".encode()
            before, after = full.index_for(key), rebuilt.index_for(key)
            assert after != dead
            if before != dead:
                assert after == before
            else:
                moved += 1
        assert 800 < moved < 1200


def test_wraps_past_the_last_point() -> None:
    ring = Ring([Node("h", 1), Node("h", 2)])
    last_owner = ring._owners[0]
    # A hash above every point wraps to the first point.
    assert ring._values[-1] < 0xFFFFFFFF
    key = next(
        k for k in (f"w{i}".encode() for i in range(100000)) if md5_hash(k) > ring._values[-1]
    )
    assert ring.index_for(key) == last_owner


def test_node_parse() -> None:
    assert Node.parse("127.0.0.1:11211") == Node("127.0.0.1", 11211, 1)
    assert Node.parse("h:1:0").weight == 1
    assert Node.parse("h:1:7").weight == 7
    for bad in ("h", "h:x", ":1", "h:0", "h:1:-1", "h:1:2:3"):
        with pytest.raises(ValueError):
            Node.parse(bad)


@pytest.mark.parametrize(
    "distribution,weights",
    [
        ("ketama", (1, 1, 1)),
        ("ketama", (45, 46, 29)),
        ("ketama", (5, 1, 1, 7, 3)),
        ("consistent", (1, 1, 1)),
        ("consistent", (1, 2, 3)),
        ("modula", (1, 1, 1, 1)),
    ],
)
def test_agrees_with_php_get_server_by_key(distribution: str, weights: tuple[int, ...]) -> None:
    nodes = [Node("127.0.0.1", 17201 + i, w) for i, w in enumerate(weights)]
    ring = Ring(nodes, distribution)
    expected = php_servers(nodes, KEYS, distribution=distribution)
    mine = [ring.node_for(k.encode()).address for k in KEYS]
    assert sum(a == b for a, b in zip(mine, expected, strict=True)) == len(KEYS)


def test_agrees_with_php_on_port_11211_and_hostnames() -> None:
    nodes = [Node("localhost", 11211), Node("127.0.0.1", 11211), Node("mc3", 11211, 3)]
    ring = Ring(nodes)
    expected = php_servers(nodes, KEYS)
    assert [ring.node_for(k.encode()).address for k in KEYS] == expected


def test_agrees_with_php_with_one_server_removed() -> None:
    nodes = [Node("127.0.0.1", 17201 + i, w) for i, w in enumerate((3, 1, 2))]
    for dead in range(3):
        kept = [n for i, n in enumerate(nodes) if i != dead]
        # The ring rebuilt over the live servers equals PHP's ring over the shorter list.
        rebuilt = Ring(nodes, "ketama", [i for i in range(3) if i != dead])
        expected = php_servers(kept, KEYS)
        assert [rebuilt.node_for(k.encode()).address for k in KEYS] == expected


@pytest.mark.parametrize("hash_with_prefix", [False, True])
def test_prefix_hashing_agrees_with_php(hash_with_prefix: bool) -> None:
    nodes = [Node("127.0.0.1", 17201 + i) for i in range(3)]
    ring = Ring(nodes)
    keys = random.Random(7).sample(KEYS, 600)
    expected = php_servers(
        nodes, keys, prefix="app1:", hash_with_prefix=hash_with_prefix
    )
    hashed = [(b"app1:" if hash_with_prefix else b"") + k.encode() for k in keys]
    assert [ring.node_for(h).address for h in hashed] == expected
