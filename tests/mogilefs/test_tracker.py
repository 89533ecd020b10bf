"""Tracker server behaviour beyond single commands: access rules, line limits, failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.mogilefs.config import TrackerSpec
from services.mogilefs.tracker import Tracker
from tests.mogilefs.conftest import FAST, Session


@pytest.fixture
def tracker(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Tracker]:
    extra = getattr(request, "param", {})
    t = Tracker(TrackerSpec(port=0, db_path=str(tmp_path / "t.sqlite3"), **{**FAST, **extra}))
    t.start()
    try:
        yield t
    finally:
        t.stop()


@pytest.mark.parametrize("tracker", [{"admin_clients": ["10.0.0.0/8"]}], indirect=True)
def test_admin_commands_restricted_to_configured_clients(tracker: Tracker) -> None:
    s = Session(tracker.port)
    try:
        assert s.line("create_domain domain=x callid=1") == \
            b"ERR access_denied Access+denied\r\n"
        assert s.err("create_host host=h&ip=127.0.0.1&port=1") == "access_denied"
        assert s.err("set_server_setting key=skip_mkcol&value=1") == "access_denied"
        assert s.line("!version") == b"ERR access_denied Access+denied\r\n"
        # Reading is still allowed.
        assert s.line("get_domains") == b"OK domains=0\r\n"
        assert s.line("noop") == b"OK \r\n"
    finally:
        s.close()


@pytest.mark.parametrize("tracker", [{"admin_clients": ["127.0.0.1"]}], indirect=True)
def test_admin_commands_allowed_from_listed_address(tracker: Tracker) -> None:
    s = Session(tracker.port)
    try:
        assert s.ok("create_domain domain=x") == {"domain": b"x"}
    finally:
        s.close()


@pytest.mark.parametrize("tracker", [{"max_line_bytes": 300_000}], indirect=True)
def test_long_lines(tracker: Tracker) -> None:
    s = Session(tracker.port)
    try:
        assert s.line(b"noop pad=" + b"x" * 200_000) == b"OK \r\n"
        try:
            s.send(b"noop pad=" + b"x" * 400_000 + b"\r\n")
            reply = s.reply()
        except ConnectionResetError:
            reply = b""
        assert reply == b""  # closed: over the limit
    finally:
        s.close()


def test_internal_failure_is_err_failure_and_connection_survives(tracker: Tracker,
                                                                  caplog: Any) -> None:
    def broken(args: Any, client: str) -> dict[str, Any]:
        raise RuntimeError("/secret/path leaked?")

    tracker.handlers["noop"] = broken
    s = Session(tracker.port)
    try:
        assert s.line("noop callid=9") == b"ERR failure Operation+failed 9\r\n"
        assert s.line("get_domains") == b"OK domains=0\r\n"
    finally:
        s.close()
    assert "secret" in caplog.text


def test_client_gone_mid_pipeline_does_not_hurt_others(tracker: Tracker) -> None:
    a = Session(tracker.port)
    a.send(b"create_domain domain=late\r\n" * 3)
    a.close()
    b = Session(tracker.port)
    try:
        assert b.line("noop callid=b") == b"OK callid=b\r\n"
    finally:
        b.close()


def test_any_line_gets_exactly_one_reply(tracker: Tracker) -> None:
    """Arbitrary bytes (no line ends) as a request: one OK/ERR reply each, connection kept."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    s = Session(tracker.port)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(min_size=1, max_size=200).filter(
        lambda b: b"\n" not in b and b"\r" not in b and not b.startswith(b"!")
        and b.strip() != b""))
    def check(line: bytes) -> None:
        reply = s.line(line + b" callid=z" if b"sleep" not in line.lower() else b"noop")
        assert reply.startswith((b"OK ", b"ERR ")) and reply.endswith(b"\r\n"), reply
        assert s.line("noop callid=ok") == b"OK callid=ok\r\n"

    try:
        check()
    finally:
        s.close()
