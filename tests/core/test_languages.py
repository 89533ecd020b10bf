"""PHP and Java callers (Debian php-thrift, libthrift-java) against the server core."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import stubs
from tests.core.testapp import mount

CALLERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callers")
EXPECTED = ["multiplexed ALIVE", "ServiceError 404 cache retryable=false missing", "plain ALIVE"]


@pytest.fixture(scope="module")
def php_stubs(tmp_path_factory):
    return stubs.generate("php", str(tmp_path_factory.mktemp("php")))


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory):
    src = stubs.generate("java", str(tmp_path_factory.mktemp("java-src")))
    out = str(tmp_path_factory.mktemp("java-classes"))
    return stubs.build_java(src, [os.path.join(CALLERS, "Status.java")], out)


def test_php_gets_alive_and_a_typed_error(serve, php_stubs):
    host, port = serve([mount()]).server.address
    out = subprocess.run(
        ["php", os.path.join(CALLERS, "status.php"), php_stubs, host, str(port)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == EXPECTED


def test_java_gets_alive_and_a_typed_error(serve, java_classpath):
    host, port = serve([mount()]).server.address
    out = subprocess.run(
        ["java", "-cp", ":".join(java_classpath), "Status", host, str(port)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == EXPECTED
