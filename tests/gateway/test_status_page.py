"""The status page in headless Chromium: it renders instances, health and charts from live
traffic. With GLAMMP_UPDATE_SCREENSHOT=1 the screenshot replaces docs/status-page.png."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import gevent
import pytest

from gateway.admin import GatewayAdmin
from glammp.common.ttypes import ServiceError
from services.core.admin import serve_admin
from services.core.children import free_port
from tests.core.dialects import client
from tests.gateway.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1400"]
#: The page polls every 2 s; virtual time lets several polls happen without waiting.
VIRTUAL_TIME_MS = "20000"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture
def live_gateway(gateway, upstreams, split) -> Iterator[str]:
    """A gateway in front of the split deployment's two cache services (and one address
    where nothing listens), with traffic flowing (bounded); its admin page URL yielded."""
    (test_app, _), = upstreams(1)
    dead = f"127.0.0.1:{free_port()}"
    gw = gateway(upstreams={"Cache": [*(c.address for c in split.caches), dead],
                            "Jobs": [test_app]})
    admin = serve_admin("127.0.0.1", 0, GatewayAdmin(gw))
    host, port = gw.address
    stop = False

    def traffic(n: int) -> None:
        with client(host, port, "framed-binary", "Cache") as c:
            for i in range(20_000):
                if stop:
                    return
                key = "bad key" if i % 17 == 0 else "hello" if i % 3 else f"absent-{n}"
                try:
                    c.get(key, None)
                except ServiceError:
                    pass
                gevent.sleep(0.002)

    workers = [gevent.spawn(traffic, n) for n in range(4)]
    try:
        yield f"http://127.0.0.1:{admin.address[1]}/"
    finally:
        stop = True
        gevent.joinall(workers, timeout=10)
        admin.stop()


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args],
        capture_output=True, text=True, timeout=120)


def test_status_page_renders_instances_and_charts(live_gateway, split, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", live_gateway)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'class="badge ALIVE"' in html or 'class="badge WARNING"' in html
    assert "2 / 3 healthy" in html  # Cache: two up, one never listening
    assert html.count("<polyline") >= 3  # request, error and latency lines were drawn
    assert "Cache.get" in html and "400: " in html
    # The cache services' memcached, as they report it; the test app has no stats method.
    assert f"<td>{split.memcached}</td>" in html
    assert "Jobs" in html and 'id="backend-error"' in html
    assert '<span id="err"></span>' in html  # every poll succeeded

    shot = tmp_path / "status-page.png"
    out = _chromium(tmp_path, f"--screenshot={shot}", live_gateway)
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("GLAMMP_UPDATE_SCREENSHOT") == "1":
        docs = os.path.join(ROOT, "docs")
        os.makedirs(docs, exist_ok=True)
        shutil.copyfile(shot, os.path.join(docs, "status-page.png"))
