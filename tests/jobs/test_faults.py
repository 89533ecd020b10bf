"""Faults, for real: gearmand crashes and restarts, a dead server among two, a worker killed
mid-job, and a peer that drops the connection after acknowledging a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import gevent
import gevent.server
import pytest

from glammp.common.ttypes import ErrorCode, ServiceError
from glammp.jobs.ttypes import JobStatus
from services.core.children import Child, wait_for
from services.jobs import protocol as p
from services.jobs.client import GearmanClient
from tests.jobs import jobfuncs
from tests.jobs.conftest import StartWorker, deadline_in, unique_fn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MakeGearmand = Callable[..., Child]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def glammp_worker(procs: list[subprocess.Popen[bytes]], log_path: str, *args: str
                  ) -> subprocess.Popen[bytes]:
    """`glammp worker ARGS` as a separate process (its own gevent hub)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "--log-level", "warning",
                                 "worker", *args], cwd=ROOT, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    procs.append(proc)
    return proc


def test_kill9_gearmand_with_sqlite_queue_keeps_background_jobs(
        make_gearmand: MakeGearmand, worker_for: StartWorker, tmp_path: object) -> None:
    queue = os.path.join(str(tmp_path), "queue.sqlite")
    g = make_gearmand(queue_db=queue)
    client = GearmanClient([g.address])
    fn = unique_fn("durable")
    try:
        handles = [client.submit_background(fn, f"bg-{i}".encode(), None, prio,
                                            deadline_in(5))[0]
                   for i, prio in enumerate([2, 0, 1])]
        g.kill9()
        wait_for(lambda: not client.connected(g.address), 5, what="client saw the crash")
        g.start()
        ran: list[bytes] = []
        worker_for([g.address], {fn: lambda job: ran.append(job.workload) or b""},
                   concurrency=1)
        wait_for(lambda: len(ran) == 3, 10, what="replayed jobs ran")
        assert ran == [b"bg-2", b"bg-1", b"bg-0"]  # priority order kept: high, normal, low
        # The client reconnects by itself after its back-off (503 until then).
        wait_for(lambda: _answers_unknown(client, handles[0]), 10, interval_s=0.1,
                 what="status after reconnect")
    finally:
        client.close()


def _answers_unknown(client: GearmanClient, handle: str) -> bool:
    try:
        return not client.status(handle, deadline_in(2)).known
    except ServiceError as e:
        assert e.code == 503
        return False


def test_two_servers_kill_one_submissions_continue(make_gearmand: MakeGearmand,
                                                   worker_for: StartWorker) -> None:
    a, b = make_gearmand(), make_gearmand()
    fn = unique_fn("ha")
    worker_for([a.address, b.address], {fn: jobfuncs.echo}, concurrency=8)
    client = GearmanClient([a.address, b.address])
    try:
        homes = {client.order(f"u{i}".encode())[0].address for i in range(20)}
        assert homes == {a.address, b.address}  # uniques spread over both servers
        for i in range(20):
            r = client.submit(fn, f"before-{i}".encode(), f"u{i}", 0, deadline_in(5))
            assert r.data == f"before-{i}".encode()
        a.kill9()
        wait_for(lambda: not client.connected(a.address), 5, what="client saw the crash")
        for i in range(20):
            r = client.submit(fn, f"after-{i}".encode(), f"u{i}", 0, deadline_in(5))
            assert r.status == JobStatus.COMPLETE and r.data == f"after-{i}".encode()
            assert r.handle.startswith(f"H:{b.address}:")
    finally:
        client.close()


def test_gearmand_restart_client_and_worker_reconnect(make_gearmand: MakeGearmand,
                                                      worker_for: StartWorker) -> None:
    g = make_gearmand()
    fn = unique_fn("restart")
    worker_for([g.address], {fn: jobfuncs.echo})
    client = GearmanClient([g.address])
    try:
        assert client.submit(fn, b"one", None, 0, deadline_in(5)).data == b"one"
        g.kill9()
        wait_for(lambda: not client.connected(g.address), 5, what="client saw the crash")
        with pytest.raises(ServiceError) as e:
            client.submit(fn, b"down", None, 0, deadline_in(2))
        assert e.value.code == 503 and e.value.retryable
        g.start()

        def works() -> bool:
            try:
                return client.submit(fn, b"two", None, 0, deadline_in(2)).data == b"two"
            except ServiceError as err:
                assert err.code == 503
                return False

        wait_for(works, 10, interval_s=0.1, what="submit after gearmand restart")
    finally:
        client.close()


def test_worker_killed_mid_job_is_retried_by_another(gearmand: Child, tmp_path: object,
                                                     procs: list[subprocess.Popen[bytes]]
                                                     ) -> None:
    fn = unique_fn("hang")
    marker = os.path.join(str(tmp_path), "marker")
    log = os.path.join(str(tmp_path), "workers.log")
    first = glammp_worker(procs, log, "--server", gearmand.address,
                          f"{fn}=tests.jobs.jobfuncs:hang_once")
    client = GearmanClient([gearmand.address])
    try:
        call = gevent.spawn(client.submit, fn, marker.encode(), None, 0, deadline_in(60))
        wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0, 20,
                 what="first worker took the job")
        second = glammp_worker(procs, log, "--server", gearmand.address,
                               f"{fn}=tests.jobs.jobfuncs:hang_once")
        wait_for(lambda: any(fn in w.functions for w in _workers(client, gearmand))
                 and len([w for w in _workers(client, gearmand) if fn in w.functions]) == 2,
                 20, what="second worker registered")
        os.kill(first.pid, signal.SIGKILL)
        r = call.get(timeout=30)
        assert r.status == JobStatus.COMPLETE
        assert r.data == str(second.pid).encode()
    finally:
        client.close()


def _workers(client: GearmanClient, g: Child) -> list[p.WorkerLine]:
    return p.parse_workers(client.admin(g.address, "workers", deadline_in(2)))


class DroppingPeer:
    """A fake gearmand on 127.0.0.1:0: answers OPTION_REQ, acknowledges each SUBMIT_JOB with
    JOB_CREATED, and closes the connection after `submits` of them."""

    def __init__(self, submits: int) -> None:
        self.submits = submits
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def handle(self, sock: object, addr: object) -> None:
        reader = p.PacketReader(p.REQ)
        n = 0
        while n < self.submits:
            data = sock.recv(65536)  # type: ignore[attr-defined]
            if not data:
                return
            for packet in reader.feed(data):
                if packet.type == p.OPTION_REQ:
                    sock.sendall(p.encode(p.OPTION_RES, packet.arg(0), magic=p.RES))  # type: ignore[attr-defined]
                elif packet.type in p.SUBMIT_TYPES.values():
                    n += 1
                    sock.sendall(p.encode(p.JOB_CREATED, f"H:fake:{n}".encode(), magic=p.RES))  # type: ignore[attr-defined]
        sock.close()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.server.stop()


def test_connection_dropped_mid_call_gives_outcome_unknown() -> None:
    # Three callers share one job (single-flight: one SUBMIT), two have their own.
    peer = DroppingPeer(submits=3)
    client = GearmanClient([peer.address])
    try:
        uniques = ["same", "same", "same", "own-1", "own-2"]

        def call(i: int, unique: str) -> object:
            try:
                return client.submit("fn", f"{i}".encode(), unique, 0, deadline_in(30))
            except ServiceError as e:
                return e

        calls = [gevent.spawn(call, i, u) for i, u in enumerate(uniques)]
        gevent.joinall(calls, timeout=10)
        assert all(g.dead for g in calls), "callers hung after the drop"
        for g in calls:
            assert isinstance(g.value, ServiceError)
            assert g.value.code == ErrorCode.JOB_OUTCOME_UNKNOWN
            assert not g.value.retryable
    finally:
        client.close()
        peer.stop()


def test_silent_peer_gives_timeout_at_the_deadline() -> None:
    peer = DroppingPeer(submits=10**6)  # acknowledges, never completes
    client = GearmanClient([peer.address])
    try:
        r = client.submit("fn", b"x", None, 0, deadline_in(0.3))
        assert r.status == JobStatus.TIMEOUT and r.handle == "H:fake:1"
    finally:
        client.close()
        peer.stop()
