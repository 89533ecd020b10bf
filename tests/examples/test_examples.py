"""Every language's example against a real glammp, and values, files and jobs crossing languages.

Each example prints one line per step of its tour; the test compares the whole output with what
the step must print. Parts the running server does not implement yet (it answers 501) are
expected as the example's "skipped: 501 NOT_IMPLEMENTED" line, after Python confirmed the 501.
"""

from __future__ import annotations

import pathlib
import re
import uuid

import pytest

from glammp.cache.ttypes import ValueType
from services.client import connect
from services.core.children import free_port
from tests.examples.conftest import Glammp, ServerFacts
from tests.gateway.certs import make_ca

LANGUAGES = ["php", "java", "node", "go", "ruby", "perl"]
#: The examples that also show the delayed multi-get and namespace invalidation.
FULL_TOUR = {"php", "java"}
#: Runtimes whose clients reject a reply whose message name differs from the call's.
#: What each example stores as a file (see its file tour).
FILE_CONTENT = {"php": "PHP", "java": "Java", "node": "Node", "go": "Go", "ruby": "Ruby",
                "perl": "Perl"}


def expected_tour(lang: str, facts: ServerFacts) -> list[str]:
    """The tour's lines as regular expressions (the texts are escaped)."""
    e = re.escape
    lines = [e("status ALIVE"), e("put STORED"),
             e(f"get found value=hello from {lang} type=STRING"), e("get_multi hits=2 misses=1")]
    if lang in FULL_TOUR:
        lines.append(e("delayed get_multi hits=2"))
    lines.append(e("cas counter=101 attempts=2"))
    if lang in FULL_TOUR:
        lines.append(e("namespace invalidated before=hit after=miss"))
    bad = facts.bad_key
    lines.append(e(f"error 400 BAD_REQUEST retryable=false origin=cache: {bad.message}"))
    size = len(f"a file stored from {FILE_CONTENT[lang]}\n")
    lines += [e(f"file stored {size} bytes"), e(f"file fetched {size} bytes same=true")]
    lines += [e(f"job submit COMPLETE data={f'glammp-{lang}'[::-1]}"),
              e(f"job background COMPLETE data={f'background-{lang}'[::-1]}")]
    return lines



def check_tour(glammp: Glammp, facts: ServerFacts, lang: str) -> None:
    lines = glammp.lines(lang)
    expected = expected_tour(lang, facts)
    assert len(lines) == len(expected), "\n".join(lines)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_example_tour_prints_every_step(glammp: Glammp, facts: ServerFacts, lang: str) -> None:
    check_tour(glammp, facts, lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_example_tour_over_tls(glammp_tls: Glammp, facts: ServerFacts, lang: str) -> None:
    check_tour(glammp_tls, facts, lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_example_refuses_a_tls_server_its_ca_did_not_sign(glammp_tls: Glammp, lang: str,
                                                         tmp_path: pathlib.Path) -> None:
    other_ca = make_ca(str(tmp_path))
    done = glammp_tls.run(lang, env={"GLAMMP_TLS_CA": other_ca})
    assert done.returncode != 0 and done.stdout == "", done.stdout
    assert re.search(r"(?i)certificate|verif|unknown authority|trust anchor", done.stderr), \
        done.stderr


@pytest.mark.parametrize("lang", LANGUAGES)
def test_example_fails_fast_when_nothing_listens(glammp: Glammp, lang: str) -> None:
    done = glammp.run(lang, env={"GLAMMP_PORT": str(free_port())})
    assert done.returncode != 0 and done.stdout == "", done.stdout
    assert re.search(r"(?i)refused|could not connect", done.stderr), done.stderr


def test_examples_see_the_error_python_sees(facts: ServerFacts) -> None:
    # The tour compares each language's error line with this one error, seen from Python.
    bad = facts.bad_key
    assert (bad.code, bad.retryable, bad.origin) == (400, False, "cache")
    assert "bad key" in bad.message and bad.details


def test_value_set_from_php_reads_with_the_same_type_everywhere(glammp: Glammp,
                                                                facts: ServerFacts) -> None:
    key = f"example:cross:{uuid.uuid4().hex}"
    assert glammp.lines("php", "put-int", key, "42") == ["put STORED"]
    assert glammp.lines("java", "get", key) == ["get found value=42 type=LONG"]
    with connect(glammp.host, glammp.port, "Cache") as cache:
        item = cache.get(key, None)
    assert (item.found, item.value, item.type) == (True, b"42", ValueType.LONG)
    assert glammp.lines("node", "get", key) == ["get found value=42 type=LONG"]


def test_file_stored_from_java_is_fetched_from_php(glammp: Glammp) -> None:
    key = f"cross/{uuid.uuid4().hex}.txt"
    assert glammp.lines("java", "store", "glammp", key, "stored by java") == [
        "file stored 14 bytes"]
    assert glammp.lines("php", "fetch", "glammp", key) == ["fetched stored by java"]


def test_job_from_go_is_served_by_a_python_worker_and_read_by_ruby(glammp: Glammp,
                                                                   facts: ServerFacts) -> None:
    workload = f"cross-{uuid.uuid4().hex[:8]}"
    [line] = glammp.lines("go", "submit-background", "reverse", workload)
    handle = line.removeprefix("job background handle=")
    assert handle.startswith(f"H:{glammp.gearmand}:"), line
    assert glammp.lines("ruby", "result", handle) == [
        f"job background COMPLETE data={workload[::-1]}"]
