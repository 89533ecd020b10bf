"""The split deployment: a gateway process in front of two cache and two jobs service
processes over a real memcached and gearmand; callers in Python, PHP and Java, plain and
over mutual TLS."""

from __future__ import annotations

import os
import ssl
import subprocess

import gevent
import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.TSSLSocket import TSSLSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

from gateway.config import AccessRule, TlsConfig
from glammp.cache import Cache
from glammp.common.ttypes import ErrorCode, ServiceError
from services.core.children import wait_for
from tests import stubs
from tests.core.dialects import client
from tests.gateway import certs

CALLERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callers")


@pytest.fixture(scope="module")
def php_stubs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return stubs.generate("php", str(tmp_path_factory.mktemp("php")))


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    src = stubs.generate("java", str(tmp_path_factory.mktemp("java-src")))
    out = str(tmp_path_factory.mktemp("java-classes"))
    return stubs.build_java(src, [os.path.join(CALLERS, "GatewayCall.java")], out)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("certs"))
    ca = certs.make_ca(d)
    server = certs.make_cert(d, "localhost", server=True)
    php = certs.make_cert(d, "php-caller")
    certs.make_cert(d, "java-caller")
    keystore, truststore = certs.java_stores(d, "java-caller")
    return {"ca": ca, "cert": server[0], "key": server[1], "php_cert": php[0],
            "php_key": php[1], "keystore": keystore, "truststore": truststore}


PLAIN_EXPECTED = [
    "name glammp-gateway",
    "get world",
    "ServiceError 400 cache retryable=false",
    "ServiceError 403 gateway retryable=false",
]


@pytest.mark.parametrize("dialect", ["framed-binary", "framed-compact", "unframed-binary",
                                     "header-compact"])
def test_python_through_the_gateway(split, dialect):
    with client(*split.gateway, dialect, "Cache") as c:
        assert c.get("hello", None).value == b"world"
        assert c.put(f"py-{dialect}", b"\x00\xff" * 100, None) == 0
        assert c.get(f"py-{dialect}", None).value == b"\x00\xff" * 100
        items = c.get_multi(["hello", f"py-{dialect}", "absent"], None, True)
        assert [i.found for i in items] == [True, True, False]
        with pytest.raises(ServiceError) as e:
            c.get("bad key", None)
        assert e.value.code == ErrorCode.BAD_REQUEST and e.value.origin == "cache"
        c.put_async(f"async-{dialect}", b"later", None)
        wait_for(lambda: c.get(f"async-{dialect}", None).found, 10, what="oneway put stored")


def test_jobs_through_the_gateway(split):
    from glammp.jobs.ttypes import Job

    with client(*split.gateway, "framed-compact", "Jobs") as c:
        submitted = c.submit_background(Job(name="gw-test-fn", workload=b"w"))
        assert submitted.handle
        # Either instance answers for the job: they share gearmand.
        for _ in range(4):
            assert c.status(submitted.handle).known is True
        assert "gw-test-fn" in [f.name for f in c.functions()]
        with pytest.raises(ServiceError) as e:
            c.cancel(submitted.handle)  # an admin method: denied by the gateway
        assert e.value.code == ErrorCode.FORBIDDEN and e.value.origin == "gateway"


@pytest.mark.parametrize("codec", ["binary", "compact"])
def test_php_through_the_gateway(split, php_stubs, codec):
    out = subprocess.run(
        ["php", os.path.join(CALLERS, "gateway_call.php"), php_stubs, *map(str, split.gateway),
         codec], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == PLAIN_EXPECTED


@pytest.mark.parametrize("codec", ["binary", "compact"])
def test_java_through_the_gateway(split, java_classpath, codec):
    out = subprocess.run(
        ["java", "-cp", ":".join(java_classpath), "GatewayCall", *map(str, split.gateway),
         codec], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == PLAIN_EXPECTED


def test_a_thousand_concurrent_callers(split):
    host, port = split.gateway
    ok: list[int] = []
    failed: list[BaseException] = []
    ready = gevent.event.Event()

    def caller(i: int) -> None:
        try:
            with client(host, port, "framed-binary", "Cache", timeout_s=60) as c:
                ready.wait(30)
                for _ in range(3):
                    assert c.get("hello", None).value == b"world"
                    ok.append(i)
        except BaseException as e:  # collected, so one failure does not hide the others
            failed.append(e)

    greenlets = [gevent.spawn(caller, i) for i in range(1000)]
    gevent.sleep(0)
    ready.set()
    gevent.joinall(greenlets, timeout=120)
    assert all(g.ready() for g in greenlets), "callers still running after 120 s"
    assert failed == [] and len(ok) == 3000


@pytest.fixture
def tls_gateway(gateway, split, tls_files):
    return gateway(
        upstreams={"Cache": [c.address for c in split.caches]},
        tls=TlsConfig(certfile=tls_files["cert"], keyfile=tls_files["key"],
                      cafile=tls_files["ca"]),
        access=[AccessRule(callers=["cn:java-caller"], allow=["Cache.flush"])],
    )


def test_tls_callers_from_php_and_java(split, tls_gateway, tls_files, php_stubs,
                                       java_classpath):
    host, port = tls_gateway.address
    php = subprocess.run(
        ["php", os.path.join(CALLERS, "gateway_call.php"), php_stubs, host, str(port), "binary",
         tls_files["ca"], tls_files["php_cert"], tls_files["php_key"]],
        capture_output=True, text=True, timeout=60)
    assert php.returncode == 0, php.stdout + php.stderr
    # php-caller may not flush.
    assert php.stdout.splitlines() == PLAIN_EXPECTED
    java = subprocess.run(
        ["java", "-cp", ":".join(java_classpath), "GatewayCall", host, str(port), "compact",
         tls_files["keystore"], tls_files["truststore"], certs.STORE_PASSWORD],
        capture_output=True, text=True, timeout=60)
    assert java.returncode == 0, java.stdout + java.stderr
    # java-caller is allowed the admin method by its certificate's name.
    assert java.stdout.splitlines() == PLAIN_EXPECTED[:3] + ["flushed"]
    with client(*split.gateway, "framed-binary", "Cache") as c:
        assert not c.get("hello", None).found  # the flush reached memcached
        c.put("hello", b"world", None)


def test_tls_without_a_client_certificate_is_refused(tls_gateway, tls_files):
    host, port = tls_gateway.address
    sock = TSSLSocket(host, port, cert_reqs=ssl.CERT_REQUIRED, ca_certs=tls_files["ca"],
                      server_hostname="localhost")
    trans = TFramedTransport(sock)
    with pytest.raises((TTransportException, OSError)):
        trans.open()
        Cache.Client(TMultiplexedProtocol(TBinaryProtocol(trans), "Cache")).get("hello", None)
    trans.close()
