"""Key listing: pagination across 2,500 keys, prefixes, and the end as an empty page."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import gevent.pool

from glammp.filestore.ttypes import StorageClass, StoreOptions
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import Store

KEYS = 2500
#: Concurrent stores while filling the domain.
WORKERS = 16


def test_pagination_across_2500_keys(filestore: Callable[..., Store],
                                     mogilefs: DevCluster) -> None:
    fs = filestore(mogilefs)
    domain = "list-" + uuid.uuid4().hex[:8]
    fs.handler.create_domain(domain)
    fs.handler.create_class(domain, StorageClass("one", 1))
    one = StoreOptions(storage_class="one")
    wanted = sorted([f"page/{i:05d}" for i in range(KEYS)] + ["other/1", "other/2"])

    def fill(keys: list[str]) -> None:
        with fs.client() as c:
            for key in keys:
                c.store(domain, key, key.encode(), one)

    group = gevent.pool.Group()
    for w in range(WORKERS):
        group.spawn(fill, wanted[w::WORKERS])
    group.join(raise_error=True)

    with fs.client() as c:
        seen: list[str] = []
        after, pages = "", 0
        while pages < 10:
            page = c.list_keys(domain, "page/", after, 1000)
            pages += 1
            seen += page.keys
            if not page.next_after:
                break
            after = page.next_after
        assert pages == 3
        assert seen == [k for k in wanted if k.startswith("page/")]
        # Small pages that end exactly on the last key: the end is an empty page.
        page = c.list_keys(domain, "", "page/02497", 2)
        assert page.keys == ["page/02498", "page/02499"] and page.next_after == "page/02499"
        page = c.list_keys(domain, "page/", "page/02499", 2)
        assert (page.keys, page.next_after) == ([], "")
        assert c.list_keys(domain, "nothing-here/", "", 10).keys == []
        # Unprefixed listing sees every key; an `after` outside the prefix is handled.
        assert c.list_keys(domain, "other/", "", 0).keys == ["other/1", "other/2"]
        assert c.list_keys(domain, "other/", "a", 5).keys == ["other/1", "other/2"]
        assert c.list_keys(domain, "other/", "zzz", 5).keys == []
        total, after = 0, ""
        for _ in range(10):
            page = c.list_keys(domain, "", after, 1000)
            total += len(page.keys)
            after = page.next_after
            if not after:
                break
        assert total == len(wanted)
