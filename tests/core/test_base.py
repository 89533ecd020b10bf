"""The base service's status: life cycle and handler health."""

from __future__ import annotations

from glammp.base.ttypes import Status
from services.client import connect
from tests.core.testapp import MisbehavingCache, mount


class Unhealthy(MisbehavingCache):
    def __init__(self) -> None:
        self.problem = ""

    def health(self) -> tuple[int, str]:
        return (Status.WARNING, self.problem) if self.problem else (Status.ALIVE, "")


def test_status_reports_a_handlers_warning_and_recovery(serve):
    handler = Unhealthy()
    host, port = serve([mount(handler)]).server.address
    with connect(host, port, "Base") as base:
        assert (base.getStatus(), base.getStatusDetails()) == (Status.ALIVE, "")
        handler.problem = "memcached 127.0.0.1:1 down"
        assert base.getStatus() == Status.WARNING
        assert base.getStatusDetails() == "Cache: memcached 127.0.0.1:1 down"
        handler.problem = ""
        assert base.getStatus() == Status.ALIVE
        assert base.aliveSince() > 0 and base.getVersion()


def test_a_service_error_leaves_a_connect_block_as_itself(serve):
    import pytest

    from glammp.common.ttypes import ServiceError

    host, port = serve([mount()]).server.address
    with pytest.raises(ServiceError) as e:
        with connect(host, port, "Cache") as cache:
            cache.get("missing", None)
    assert e.value.code == 404


def test_handler_counters_reach_get_counters_and_metrics(serve):
    from services.core import metrics

    class Counting(MisbehavingCache):
        def counters(self) -> dict[str, int]:
            return {"cache.oneway.sent": 7}

    proc = serve([mount(Counting())])
    host, port = proc.server.address
    with connect(host, port, "Base") as base:
        assert base.getCounter("cache.oneway.sent") == 7
    text = metrics.render_prometheus(proc.snapshot())
    assert 'glammp_handler_value{name="cache.oneway.sent"} 7' in text


def test_status_is_stopping_while_draining(serve):
    import gevent

    from services.core.children import wait_for
    from tests.core.dialects import client

    proc = serve([mount()])
    host, port = proc.server.address
    with client(host, port, "framed-binary", "Cache") as c:
        caller = gevent.spawn(c.get, "sleep:0.5", None)
        wait_for(lambda: proc.metrics.active == 1, 5, what="the call running")
        drainer = gevent.spawn(proc.server.drain, 5.0)
        wait_for(lambda: proc.board.current()[0] == Status.STOPPING, 5, what="STOPPING")
        assert proc.dispatcher.handlers["Base"].getStatus() == Status.STOPPING
        assert caller.get(timeout=5).value == b"sleep:0.5"  # the in-flight call finished
        assert drainer.get(timeout=5) is True
