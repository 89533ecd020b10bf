"""A caller that stops reading a streamed fetch must not hold a storage node's connection.

A fetched body is streamed from the node's connection (one of a bounded few per node) as the
caller takes it. A caller that falls behind gets the rest read whole first, so the node's
connection is freed for everyone else (`services.core.server.SLOW_CALLER_S`).
"""

from __future__ import annotations

import os
import socket
import struct
import uuid

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.TTransport import TMemoryBuffer

from glammp.filestore import Filestore
from glammp.filestore.ttypes import StoreOptions

MIB = 1024 * 1024


def _fetch_request(key: str) -> bytes:
    buf = TMemoryBuffer()
    Filestore.Client(TMultiplexedProtocol(TBinaryProtocol(buf), "Filestore")).send_fetch(
        "", key, None)
    payload = buf.getvalue()
    return struct.pack(">i", len(payload)) + payload


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), MIB))
        assert chunk, "connection closed"
        out += chunk
    return bytes(out)


def test_a_caller_that_stops_reading_does_not_hold_the_storage_node(filestore, mogilefs):
    fs = filestore(mogilefs)
    # One connection per storage node, so a held one would shut every other fetch out.
    fs.handler.storage.max_connections = 1
    fs.handler.storage.pool_wait_s = 5.0
    key = f"slow/{uuid.uuid4().hex}"
    data = os.urandom(12 * MIB)  # far more than the two sockets' buffers hold
    with fs.client() as c:
        c.store("", key, data, StoreOptions(storage_class="single"))  # one copy, one node

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    slow.settimeout(30)
    slow.connect((fs.host, fs.port))
    try:
        slow.sendall(_fetch_request(key))
        # The reply has started: the body is being streamed from the node.
        assert slow.recv(1, socket.MSG_PEEK)
        # Another caller's fetch from the same node gets its connection (without the
        # fallback it would wait out pool_wait_s and fail with 503).
        with fs.client() as c:
            assert c.fetch("", key, None) == data
        # And the slow caller, reading at last, gets every byte.
        size = struct.unpack(">i", _read_exact(slow, 4))[0]
        reply = _read_exact(slow, size)
        assert reply.endswith(data + b"\x00")
    finally:
        slow.close()
