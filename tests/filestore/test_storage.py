"""The storage HTTP client against nginx's WebDAV (a storage server that is not glammp's):
streamed chunked PUT, Range GET, HEAD, and failover across dead, missing and good copies."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from glammp.common.ttypes import ServiceError
from services.core.children import Child, free_port, wait_for
from services.filestore.storage import ChunkedPut, StorageClient, StorageFailure

NGINX = "/usr/sbin/nginx"
CONF = """daemon off; master_process off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp}/body; client_max_body_size 0;
  keepalive_timeout 1s;
  server {{ listen 127.0.0.1:{port}; root {root};
    location / {{ dav_methods PUT DELETE; create_full_put_path on; }} }} }}
"""


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    tmp = str(tmp_path_factory.mktemp("nginx"))
    root = os.path.join(tmp, "root")
    os.makedirs(os.path.join(root, "dev1"))
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(tmp=tmp, port=port, root=root))
    child = Child("nginx", [NGINX, "-c", conf, "-p", tmp, "-e", "stderr"], "127.0.0.1", port,
                  os.path.join(tmp, "nginx.log")).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture
def client() -> Iterator[StorageClient]:
    c = StorageClient(io_timeout_s=30)
    yield c
    c.close()


def test_chunked_put_then_range_get(nginx: str, client: StorageClient) -> None:
    url = f"{nginx}/dev1/0/000/000/0000000001.fid"
    pieces = [os.urandom(n) for n in (1, 65536, 1 << 20, 7)]
    put = ChunkedPut(client, url)
    for piece in pieces:
        put.write(piece)
    put.write(b"")  # an empty chunk must not end the body
    put.finish()
    data = b"".join(pieces)
    assert client.head(url) == len(data)
    assert client.get(url) == data
    assert client.get(url, 65530, 20) == data[65530:65550]
    assert client.get(url, len(data) - 3, 100) == data[-3:]
    assert client.get(url, len(data), 10) == b""
    with pytest.raises(ServiceError) as e:
        client.get(url, max_bytes=100)
    assert e.value.code == 413
    # The pooled connection is still good after all that.
    assert client.get(url, 0, 1) == data[:1]


def test_put_with_content_md5_and_delete(nginx: str, client: StorageClient) -> None:
    url = f"{nginx}/dev1/0/000/000/0000000002.fid"
    client.put(url, b"small body", None)
    assert client.get(url) == b"small body"
    client.delete(url)
    client.delete(url)  # already gone counts as done
    with pytest.raises(StorageFailure) as e:
        client.head(url)
    assert e.value.missing


def test_read_falls_back_to_the_next_copy(nginx: str, client: StorageClient) -> None:
    good = f"{nginx}/dev1/0/000/000/0000000003.fid"
    client.put(good, b"the good copy")
    dead = f"http://127.0.0.1:{free_port()}/dev2/0/000/000/0000000003.fid"
    missing = f"{nginx}/dev1/0/000/000/0000000999.fid"
    assert client.read([dead, missing, good]) == b"the good copy"
    assert client.read([missing, good], 4, 4) == b"good"
    rejected: list[str] = []

    def check(url: str, data: bytes) -> str | None:
        rejected.append(url)
        return "bad checksum"

    with pytest.raises(StorageFailure) as e:
        client.read([good, good], check=check)
    assert len(rejected) == 2 and not e.value.missing
    with pytest.raises(StorageFailure) as e:
        client.read([missing])
    assert e.value.missing
    with pytest.raises(StorageFailure) as e:
        client.read([dead, missing])
    assert not e.value.missing


def test_a_keep_alive_connection_closed_by_the_server_is_replaced(
        nginx: str, client: StorageClient) -> None:
    url = f"{nginx}/dev1/0/000/000/0000000004.fid"
    client.put(url, b"keep-alive")
    (pooled,) = [conn for conns in client._idle.values() for conn in conns]

    def closed_by_nginx() -> bool:
        # nginx's keepalive_timeout (1 s) ends the idle connection: it becomes readable (EOF).
        return bool(select.select([pooled.sock], [], [], 0)[0])

    wait_for(closed_by_nginx, 30, what="nginx closing the idle connection")
    assert client.get(url) == b"keep-alive"


class HalfNode:
    """A storage node that answers every GET with the right head and then only the first
    `fraction` of the body it promised, then closes: a node failing mid-body."""

    def __init__(self, data: bytes, fraction: float = 0.3) -> None:
        from gevent.server import StreamServer

        self.data = data
        self.fraction = fraction
        self.requests = 0
        self.server = StreamServer(("127.0.0.1", 0), self._serve)
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/dev9/0/000/000/0000000042.fid"

    def _serve(self, sock: object, _addr: object) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)  # type: ignore[attr-defined]
            if not chunk:
                return
            head += chunk
        self.requests += 1
        first, last = 0, len(self.data) - 1
        status = b"200 OK"
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("range: bytes="):
                a, _, b = line.split("=", 1)[1].partition("-")
                first, last, status = int(a), int(b or last), b"206 Partial Content"
        body = self.data[first : last + 1]
        sock.sendall(  # type: ignore[attr-defined]
            b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
            + (f"\r\nContent-Range: bytes {first}-{last}/{len(self.data)}".encode()
               if status.startswith(b"206") else b"")
            + b"\r\n\r\n" + body[: int(len(body) * self.fraction)])

    def stop(self) -> None:
        self.server.stop()


def _free_slots(client: StorageClient) -> bool:
    return all(s.counter == client.max_connections for s in client._slots.values())


def test_a_large_read_is_streamed_and_finished_by_another_copy(nginx: str,
                                                               client: StorageClient) -> None:
    from services.filestore.storage import StoredBody

    data = os.urandom(3 << 20)
    good = f"{nginx}/dev1/0/000/000/0000000042.fid"
    client.put(good, data)
    half = HalfNode(data)
    try:
        body = client.read([half.url, good], stream_min=65536)
        assert isinstance(body, StoredBody) and len(body) == len(data)
        assert body.read_all() == data
        assert half.requests == 1  # the first copy did start the body
        # A range, failing midway on the first copy as well.
        body = client.read([half.url, good], 1000, 2_000_000, stream_min=65536)
        assert isinstance(body, StoredBody) and body.read_all() == data[1000:2_001_000]
        # Small copies are read whole, as before.
        assert client.read([good], 0, 1000, stream_min=65536) == data[:1000]
        assert _free_slots(client)
    finally:
        half.stop()


def test_a_streamed_read_no_copy_can_finish_is_a_502(nginx: str,
                                                     client: StorageClient) -> None:
    from services.filestore.storage import StoredBody

    data = os.urandom(1 << 20)
    first, second = HalfNode(data), HalfNode(data, 0.6)
    try:
        body = client.read([first.url, second.url], stream_min=65536)
        assert isinstance(body, StoredBody)
        got = 0
        with pytest.raises(ServiceError) as e:
            for chunk in body.chunks():
                got += len(chunk)
        assert e.value.code == 502
        # The second copy was asked for the rest, from where the first stopped.
        from_first = int(len(data) * 0.3)
        assert got == from_first + int((len(data) - from_first) * 0.6)
        assert second.requests == 1
        body.close()
        assert _free_slots(client)
    finally:
        first.stop()
        second.stop()
