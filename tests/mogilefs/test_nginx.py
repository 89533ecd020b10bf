"""The tracker with nginx (WebDAV PUT/DELETE/MKCOL) as its storage nodes (reference C.6).

One nginx process serves two "hosts" on two free ports, each with two devices; the test writes
each device's `usage` file itself, as mogstored's diskusage child would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from services.core.children import Child, free_port
from services.mogilefs.client import TrackerClient
from services.mogilefs.config import TrackerSpec
from services.mogilefs.storage import usage_text
from services.mogilefs.tracker import Tracker
from tests.mogilefs.conftest import FAST, wait_copies, web

NGINX = "/usr/sbin/nginx"

CONF = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  client_max_body_size 0;
  {servers}
}}
"""
SERVER = """
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }}
  }}
"""


@pytest.fixture
def nginx(tmp_path: Any) -> Iterator[list[tuple[int, str]]]:
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    hosts = []
    for name, devs in (("n1", (1, 2)), ("n2", (3, 4))):
        root = str(tmp_path / name)
        for d in devs:
            os.makedirs(os.path.join(root, f"dev{d}"))
            with open(os.path.join(root, f"dev{d}", "usage"), "w") as f:
                f.write(usage_text(root))
        hosts.append((free_port(), root))
    servers = "".join(SERVER.format(port=p, root=r) for p, r in hosts)
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(tmp=tmp_path, servers=servers))
    child = Child("nginx", [NGINX, "-c", str(conf), "-p", str(tmp_path), "-e", "stderr"],
                  "127.0.0.1", hosts[-1][0], str(tmp_path / "nginx.out"))
    child.start()
    try:
        yield hosts
    finally:
        child.stop()


def test_tracker_with_nginx_storage(nginx: list[tuple[int, str]], tmp_path: Any) -> None:
    tracker = Tracker(TrackerSpec(port=0, db_path=str(tmp_path / "t.sqlite3"), **FAST))
    tracker.start()
    try:
        with TrackerClient("127.0.0.1", tracker.port) as c:
            for i, (port, _root) in enumerate(nginx, 1):
                c.call("create_host", host=f"n{i}", ip="127.0.0.1", port=port, status="alive")
            for devid, host in ((1, "n1"), (2, "n1"), (3, "n2"), (4, "n2")):
                c.call("create_device", devid=devid, hostname=host)
            devs = c.call("get_devices")
            assert [devs[f"dev{i}_observed_state"] for i in range(1, 5)] == ["writeable"] * 4
            c.call("create_domain", domain="ng")
            data = {f"k{i}": os.urandom(100 + i) for i in range(5)}
            for key, value in data.items():
                o = c.call("create_open", domain="ng", key=key)
                assert web("PUT", o["path"], value)[0] in (201, 204)
                c.call("create_close", domain="ng", key=key, fid=o["fid"], devid=o["devid"],
                       path=o["path"], size=len(value))
            for key, value in data.items():
                wait_copies(c, "ng", key, 2)
                p = c.call("get_paths", domain="ng", key=key)
                assert {web("GET", p["path1"]), web("GET", p["path2"])} == {(200, value)}
            fid = int(c.call("file_info", domain="ng", key="k0")["fid"])
            c.call("delete", domain="ng", key="k0")

            def gone() -> bool:
                return not any(f.endswith(f"{fid:010d}.fid") for _p, r in nginx
                               for _d, _s, files in os.walk(r) for f in files)

            from services.core.children import wait_for

            wait_for(gone, 15, what="nginx copies deleted")
    finally:
        tracker.stop()
    shutil.rmtree(tmp_path / "n1", ignore_errors=True)
