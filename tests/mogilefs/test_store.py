"""The metadata store on its own: fids, two-phase create, strays, listing (no servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.mogilefs.store import Duplicate, NoTempfile, Store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.create_domain("d")
    try:
        yield s
    finally:
        s.close()


def test_fids_increase_and_skip_explicit_ones(store: Store) -> None:
    a = store.create_tempfile(1, b"k", 0, [1])
    assert store.create_tempfile(1, b"k", 0, [1], fid=(a or 0) + 1) == (a or 0) + 1
    b = store.create_tempfile(1, b"k", 0, [1])
    assert b is not None and a is not None and b > a + 1
    assert store.create_tempfile(1, b"k", 0, [1], fid=b) is None


def test_autoincrement_skips_a_fid_already_in_file(store: Store, db_url: str) -> None:
    fid = store.create_tempfile(1, b"k", 0, [1], fid=5)
    assert fid == 5
    store.close_file(5, 1, b"k", 3, 1, None)
    # Put the sequence behind the file's fid, as a restored backup could.
    if db_url.startswith("postgresql://"):
        store.db.execute("SELECT setval('tempfile_fid_seq', 4)")
    else:
        store.db.execute("UPDATE sqlite_sequence SET seq = 4 WHERE name = 'tempfile'")
    assert store.create_tempfile(1, b"x", 0, [1]) == 6


def test_close_is_once_and_strays_follow(store: Store) -> None:
    fid = store.create_tempfile(1, b"k", 0, [1, 3])
    assert fid is not None
    store.close_file(fid, 1, b"k", 3, 3, None)
    with pytest.raises(NoTempfile):
        store.close_file(fid, 1, b"k", 3, 3, None)
    assert {(r["fid"], r["devid"]) for r in store.due_strays(1, 10)} == {(fid, 1)}
    assert store.stray_claimed(fid, 3) and not store.stray_claimed(fid, 1)
    assert store.file_devids(fid) == [3]


def test_abandon_consumes_the_row_and_strays_every_copy(store: Store) -> None:
    fid = store.create_tempfile(1, b"k", 0, [1, 3])
    assert fid is not None
    store.abandon_upload(fid, 3)
    assert store.tempfile(fid) is None
    assert {r["devid"] for r in store.due_strays(1, 10)} == {1, 3}
    with pytest.raises(NoTempfile):
        store.close_file(fid, 1, b"k", 3, 3, None)


def test_overwrite_queues_old_fid_for_deletion(store: Store) -> None:
    fids = []
    for _ in range(2):
        fid = store.create_tempfile(1, b"k", 0, [1])
        assert fid is not None
        fids.append(fid)
    assert store.close_file(fids[0], 1, b"k", 1, 1, None) is None
    assert store.close_file(fids[1], 1, b"k", 1, 1, None) == fids[0]
    assert [r["fid"] for r in store.due_deletions(1, 10)] == [fids[0]]
    assert store.file_by_key(1, b"k")["fid"] == fids[1]  # type: ignore[index]


def test_sweep_abandons_old_tempfiles(store: Store) -> None:
    fid = store.create_tempfile(1, b"k", 0, [2, 4])
    assert store.sweep_tempfiles(0) == 0
    assert store.sweep_tempfiles(10**10) == 1
    assert store.tempfile(fid or 0) is None
    assert {r["devid"] for r in store.due_strays(1, 10)} == {2, 4}


def test_list_keys_binary_order_and_case(store: Store) -> None:
    for i, key in enumerate([b"a_b/1", b"a%b/2", b"aXb/3", b"A_B/4", b"ab/5", b"\xff"]):
        store.db.execute("INSERT INTO file VALUES (?, 1, ?, 1, 0, 1)", (i + 1, key))
    assert store.list_keys(1, b"", b"", -1, True) == [b"A_B/4", b"a%b/2", b"aXb/3", b"a_b/1",
                                                      b"ab/5", b"\xff"]
    assert store.list_keys(1, b"a_", b"", 10, True) == [b"a_b/1"]
    assert store.list_keys(1, b"a_", b"", 10, False) == [b"A_B/4", b"a_b/1"]
    assert store.list_keys(1, b"a%", b"", 10, False) == [b"a%b/2"]
    assert store.list_keys(1, b"", b"aXb/3", 2, True) == [b"a_b/1", b"ab/5"]


def test_duplicates(store: Store) -> None:
    with pytest.raises(Duplicate):
        store.create_domain("d")
    store.create_host({"hostname": "h", "hostip": "127.0.0.1", "http_port": 1, "status": "alive"})
    with pytest.raises(Duplicate):
        store.create_host({"hostname": "h2", "hostip": "127.0.0.1", "http_port": 1,
                           "status": "alive"})
    store.create_device(1, 1, "alive")
    with pytest.raises(Duplicate):
        store.create_device(1, 1, "alive")


def test_reap_forgets_copies_and_queues_replication(store: Store) -> None:
    store.db.execute("INSERT INTO file VALUES (9, 1, 'k', 1, 0, 2)")
    store.db.execute("INSERT INTO file_on VALUES (9, 1), (9, 3)")
    assert store.devices_with_copies([1, 2]) == [1]
    assert store.reap_device(1, 10) == [9]
    assert store.file_devids(9) == [3]
    assert store.replication(9) is not None
    assert store.file(9)["devcount"] == 2  # type: ignore[index]


def test_postgres_connection_lost_is_replaced(store: Store, db_url: str,
                                              request: pytest.FixtureRequest) -> None:
    if not db_url.startswith("postgresql://"):
        pytest.skip("PostgreSQL only")
    import pg8000.native

    server = request.getfixturevalue("postgres")
    dbname = db_url.rsplit("/", 1)[1]
    admin = pg8000.native.Connection("postgres", host="127.0.0.1", port=server.port,
                                     database="postgres")
    try:
        admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = :d AND pid <> pg_backend_pid()", d=dbname)
    finally:
        admin.close()
    with pytest.raises(Exception):  # noqa: B017 - whichever error the lost session gives
        store.domain_id("d")
    assert store.domain_id("d") == 1
    assert store.create_domain("e") == 2
