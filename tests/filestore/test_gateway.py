"""Upload sessions through the gateway, in front of two filestore instances.

A session lives in the instance that began it, so the gateway sends a caller connection's
upload calls (its `sticky` methods) to one instance; everything else is balanced as usual.
"""

from __future__ import annotations

import os

import pytest

from gateway.config import GatewayConfig
from gateway.proxy import Gateway
from glammp.common.ttypes import ErrorCode, ServiceError
from services.client import connect

CHUNK = 64 * 1024


@pytest.fixture
def two(mogilefs, filestore):
    """Two filestore instances on the shared cluster, behind an in-process gateway."""
    stores = [filestore(mogilefs), filestore(mogilefs)]
    cfg = GatewayConfig(port=0, admin_port=-1, access_log=False, health_interval_ms=200,
                        upstreams={"Filestore": [f"{s.host}:{s.port}" for s in stores]})
    cfg.validate()
    gw = Gateway(cfg)
    gw.start()
    try:
        yield gw, stores
    finally:
        gw.drain(1.0)


def _upload(c, key: str, pieces: list[bytes]) -> None:
    up = c.begin_upload("", key, None)
    offset = 0
    for piece in pieces:
        offset = c.append_chunk(up.upload_id, offset, piece)
    assert c.finish_upload(up.upload_id, None).length == offset


def test_upload_calls_stay_on_the_instance_that_began_the_upload(two):
    gw, stores = two
    # Balanced at random, the 4 calls after each begin would all land on its instance once
    # in 16 tries; 6 uploads on 3 connections all landing right would be chance 1 in 2^24.
    for conn in range(3):
        with connect(*gw.address, "Filestore") as c:
            for i in range(2):
                key = f"gw-sticky/{conn}-{i}"
                pieces = [os.urandom(CHUNK) for _ in range(3)]
                _upload(c, key, pieces)
                assert c.fetch("", key, None) == b"".join(pieces)
    # Every session ended in the instance that held it.
    assert all(not s.handler.uploads.sessions for s in stores)


def test_an_upload_whose_instance_is_gone_fails_typed_and_the_next_goes_elsewhere(two):
    gw, stores = two
    with connect(*gw.address, "Filestore") as c:
        up = c.begin_upload("", "gw-sticky/lost", None)
        c.append_chunk(up.upload_id, 0, os.urandom(CHUNK))
        (holder,) = [s for s in stores if up.upload_id in s.handler.uploads.sessions]
        (survivor,) = [s for s in stores if s is not holder]
        holder.proc.stop()
        with pytest.raises(ServiceError) as e:
            c.append_chunk(up.upload_id, CHUNK, os.urandom(CHUNK))
        # The instance is gone with the session: 503 when the call was lost on its way
        # there, or the survivor's 404 for an upload it never began.
        assert e.value.code in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_FOUND)
        data = os.urandom(CHUNK)
        _upload(c, "gw-sticky/after", [data, data])
        assert c.fetch("", "gw-sticky/after", None) == data + data
        assert not survivor.handler.uploads.sessions
