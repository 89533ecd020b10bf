"""The soak checker catches each kind of violation it claims to, and passes a clean history.

Histories here are written by hand in the drivers' record format, so every invariant is
shown failing on exactly the fault it is about (and nothing else failing with it).
"""

from __future__ import annotations

from typing import Any
from xml.dom import minidom

import pytest

from bench.soak import checker, plot, report, workload
from bench.soak.checker import Final, check

T0 = 1_700_000_000.0


def rec(op: str, i: int, out: str = "ok", took: float = 0.01, **fields: Any) -> dict[str, Any]:
    dl = 1.0 if op.startswith("cache") else 5.0
    r = {"op": op, "c": "d0g0", "t0": T0 + i, "t1": T0 + i + took, "dl": dl, "out": out}
    r.update(fields)
    return r


def put(i: int, key: str, writer: str, seq: int, out: str = "ok") -> dict[str, Any]:
    extra = {"code": 503, "retryable": True} if out == "err" else {}
    return rec("cache.put", i, out, key=key, w=writer, s=seq, **extra)


def get(i: int, key: str, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return rec("cache.get", i, key=key, found=False)
    return rec("cache.get", i, key=key, found=True, val=raw.decode("latin-1"))


K = workload.cache_key(7)


def clean() -> tuple[list[dict[str, Any]], Final]:
    """A history in which everything held: one of each operation succeeded."""
    records = [
        put(0, K, "d0g0", 1),
        put(1, K, "d1g0", 5),
        get(2, K, workload.cache_value(K, "d0g0", 1)),  # stale: allowed
        get(3, K, workload.cache_value(K, "d1g0", 5)),
        get(4, workload.cache_key(8), None),
        rec("file.store", 5, key="soak/d0g0-6", len=10),
        rec("file.fetch", 6, key="soak/d0g0-6", match=True),
        rec("job.bg", 7, key="d0g0-8", handle="H:x:1"),
        rec("job.fg", 8, key="d0g0-9", status=0, match=True),
        rec("job.bg", 9, "err", key="d0g0-10", code=503, retryable=True, origin="jobs"),
    ]
    final = Final(files={"soak/d0g0-6": "ok"}, runs={"d0g0-8"},
                  rss_start={"cache-0": 40_000}, rss_end={"cache-0": 41_000})
    return records, final


def violated(verdict: checker.Verdict) -> set[str]:
    return {name for name, inv in verdict.invariants.items() if not inv.held}


def test_a_clean_history_holds():
    records, final = clean()
    verdict = check(records, final)
    assert verdict.held, [i.examples for i in verdict.invariants.values()]
    assert verdict.invariants["cache_values_valid"].checked == 2
    assert verdict.outcomes["ServiceError 503"] == 1


def test_a_torn_cache_value_is_reported():
    records, final = clean()
    records.append(get(20, K, workload.cache_value(K, "d1g0", 5)[:-3]))
    verdict = check(records, final)
    assert violated(verdict) == {"cache_values_valid"}
    assert "torn" in verdict.invariants["cache_values_valid"].examples[0]


def test_a_value_never_written_is_reported():
    records, final = clean()
    records.append(get(20, K, workload.cache_value(K, "d1g0", 6)))  # well formed, never put
    verdict = check(records, final)
    assert violated(verdict) == {"cache_values_valid"}
    assert "never written" in verdict.invariants["cache_values_valid"].examples[0]


def test_another_keys_value_is_reported():
    records, final = clean()
    other = workload.cache_key(9)
    records += [put(20, other, "d0g0", 30), get(21, K, workload.cache_value(other, "d0g0", 30))]
    assert violated(check(records, final)) == {"cache_values_valid"}


def test_a_put_that_failed_may_still_have_written():
    records, final = clean()
    records += [put(20, K, "d0g1", 3, out="err"), get(21, K, workload.cache_value(K, "d0g1", 3))]
    assert check(records, final).held


def test_a_lost_acknowledged_file_is_reported():
    records, final = clean()
    records.append(rec("file.store", 20, key="soak/d0g0-21", len=10))
    final.files["soak/d0g0-21"] = "ServiceError 404: unknown key"
    verdict = check(records, final)
    assert violated(verdict) == {"files_durable"}
    assert "soak/d0g0-21" in verdict.invariants["files_durable"].examples[0]


@pytest.mark.parametrize("state", ["mismatch", None])
def test_a_file_changed_or_never_read_back_is_reported(state):
    records, final = clean()
    if state is None:
        del final.files["soak/d0g0-6"]
    else:
        final.files["soak/d0g0-6"] = state
    assert violated(check(records, final)) == {"files_durable"}


def test_a_failed_store_need_not_be_readable():
    records, final = clean()
    records.append(rec("file.store", 20, "err", key="soak/x", code=502, retryable=False))
    assert check(records, final).held


def test_a_wrong_read_during_the_run_is_reported():
    records, final = clean()
    records.append(rec("file.fetch", 20, key="soak/d0g0-6", match=False))
    assert violated(check(records, final)) == {"file_reads_exact"}


def test_a_404_for_an_acknowledged_file_during_the_run_is_reported():
    records, final = clean()
    records.append(rec("file.fetch", 20, "err", key="soak/d0g0-6", code=404, retryable=False))
    assert violated(check(records, final)) == {"file_reads_exact"}
    records[-1]["code"] = 503
    assert check(records, final).held


def test_an_acknowledged_job_that_never_ran_is_reported():
    records, final = clean()
    records.append(rec("job.bg", 20, key="d0g0-21", handle="H:x:2"))
    verdict = check(records, final)
    assert violated(verdict) == {"jobs_ran"}
    assert "d0g0-21" in verdict.invariants["jobs_ran"].examples[0]


def test_a_wrong_foreground_result_is_reported():
    records, final = clean()
    records.append(rec("job.fg", 20, key="d0g0-21", status=0, match=False))
    assert violated(check(records, final)) == {"fg_results_exact"}


def test_a_hung_call_is_reported():
    records, final = clean()
    records.append(get(20, K, None))
    records[-1]["t1"] = records[-1]["t0"] + 1.0 + checker.DEADLINE_SLACK_S + 0.1
    verdict = check(records, final)
    assert violated(verdict) == {"calls_bounded"}
    assert "took" in verdict.invariants["calls_bounded"].examples[0]


def test_a_call_within_its_deadline_and_slack_is_not_hung():
    records, final = clean()
    records.append(rec("job.fg", 20, "err", took=5.0 + checker.DEADLINE_SLACK_S - 0.1,
                       key="d0g0-21", code=504, retryable=False))
    assert check(records, final).held


@pytest.mark.parametrize("exc", ["TTransportException", "TApplicationException", "TimeoutError"])
def test_an_untyped_failure_at_the_caller_is_reported(exc):
    records, final = clean()
    records.append(rec("cache.put", 20, "exc", key=K, w="d0g0", s=21, exc=exc, msg="x"))
    verdict = check(records, final)
    assert violated(verdict) == {"calls_typed"}
    assert exc in verdict.invariants["calls_typed"].examples[0]
    assert verdict.outcomes[exc] == 1


def test_memory_growth_and_unknown_rss_are_reported():
    records, final = clean()
    final.rss_end["cache-0"] = 40_000 + checker.RSS_GROWTH_LIMIT_KIB + 1
    assert violated(check(records, final)) == {"memory_bounded"}
    final.rss_end["cache-0"] = None
    assert violated(check(records, final)) == {"memory_bounded"}


def test_an_operation_that_never_succeeded_is_reported():
    records, final = clean()
    records = [r for r in records if r["op"] != "job.fg"]
    verdict = check(records, final)
    assert violated(verdict) == {"progress"}
    assert "job.fg" in verdict.invariants["progress"].examples[0]


def test_violations_are_counted_beyond_the_listed_examples():
    records, final = clean()
    records += [get(100 + i, K, b"garbage") for i in range(checker.MAX_LISTED + 5)]
    inv = check(records, final).invariants["cache_values_valid"]
    assert inv.violations == checker.MAX_LISTED + 5 and len(inv.examples) == checker.MAX_LISTED


def test_the_report_names_each_violated_invariant_and_the_plot_is_svg():
    records, final = clean()
    records.append(get(20, K, b"torn"))
    verdict = check(records, final)
    events = [{"t": T0 + 3, "action": "kill", "kind": "memcached", "name": "memcached-1",
               "pid": 1},
              {"t": T0 + 5, "action": "restart", "kind": "memcached", "name": "memcached-1",
               "pid": 2, "took_s": 0.1}]
    text = report.text(verdict, records, events, final, {"seed": 1}, T0)
    assert "VIOLATIONS FOUND" in text
    assert "cache_values_valid  VIOLATED (1)" in text
    assert "faults injected: 1 (memcached 1)" in text
    svg = plot.svg(plot.series(records, T0, 30, 1.0), 30, events, T0, "t")
    doc = minidom.parseString(svg)
    assert len(doc.getElementsByTagName("polyline")) == 5  # throughput, 3 latencies, errors
    assert len(doc.getElementsByTagName("line")) == 2  # the kill and the restart
    doc.unlink()
