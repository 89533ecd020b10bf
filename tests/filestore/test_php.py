"""The real client check: a PHP frontend stores through the Thrift stub and serves the path."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable

import pytest

from services.mogilefs.devcluster import DevCluster
from tests import stubs
from tests.filestore.conftest import Store

CALLERS = os.path.join(os.path.dirname(__file__), "callers")


@pytest.fixture(scope="module")
def php_stubs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return stubs.generate("php", str(tmp_path_factory.mktemp("php")))


def test_php_frontend_stores_then_fetches_the_path_over_http(
        filestore: Callable[..., Store], mogilefs: DevCluster, php_stubs: str) -> None:
    fs = filestore(mogilefs)
    key = f"php/{uuid.uuid4().hex}.jpg"
    out = subprocess.run(
        ["php", os.path.join(CALLERS, "frontend.php"), php_stubs, fs.host, str(fs.port), key],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    lines = out.stdout.splitlines()
    assert lines[0].startswith("stored fid=") and lines[0].endswith("length=3012 checksum_ok=true")
    assert lines[1:] == ["http same", "thrift same", "ServiceError 404 unknown_key"]
    assert fs.handler.info("", key).length == 3012
