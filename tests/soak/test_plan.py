"""Pure parts of the soak: self-validating values, the fault plan and the plot's buckets."""

from __future__ import annotations

from bench.soak import faults, plot, workload


def test_cache_values_parse_back_and_torn_ones_do_not():
    key = workload.cache_key(3)
    for seq in (0, 1, 399, 400, 12345):
        value = workload.cache_value(key, "d2g1", seq)
        assert workload.parse_cache_value(key, value) == ("d2g1", seq)
        assert workload.parse_cache_value(key, value[:-1]) is None
        assert workload.parse_cache_value(key, value + b"x") is None
        assert workload.parse_cache_value(workload.cache_key(4), value) is None
    spliced = workload.cache_value(key, "a", 5)[:20] + workload.cache_value(key, "b", 5)[20:]
    assert workload.parse_cache_value(key, spliced) is None
    assert workload.parse_cache_value(key, b"\xff\xfe") is None


def test_file_data_is_a_function_of_the_key():
    a, b = workload.file_data("soak/a"), workload.file_data("soak/b")
    assert a == workload.file_data("soak/a") and a != b
    for data in (a, b):
        assert workload.FILE_MIN_BYTES <= len(data) < workload.FILE_MIN_BYTES + \
            workload.FILE_SPAN_BYTES


def test_a_short_plan_hits_every_kind_once_inside_the_load():
    plan = faults.plan(seed=7, duration_s=60, count=len(faults.KINDS))
    assert sorted(f.kind for f in plan) == sorted(faults.KINDS)
    for before, after in zip(plan, plan[1:], strict=False):
        assert before.at_s + before.pause_s <= after.at_s  # never two faults at once
    assert plan[0].at_s >= faults.MARGIN_S
    assert plan[-1].at_s + plan[-1].pause_s <= 60 - faults.MARGIN_S
    assert plan == faults.plan(seed=7, duration_s=60, count=len(faults.KINDS))
    assert plan != faults.plan(seed=8, duration_s=60, count=len(faults.KINDS))


def test_a_long_plan_has_one_fault_per_period():
    count = faults.default_count(600)
    assert count == 30
    plan = faults.plan(seed=1, duration_s=600, count=count)
    assert len(plan) == 30 and {f.kind for f in plan} == set(faults.KINDS)


def test_series_buckets_by_end_time():
    t0 = 1000.0
    records = [{"t0": t0 + 0.1, "t1": t0 + 0.2, "out": "ok"},
               {"t0": t0 + 0.3, "t1": t0 + 0.5, "out": "err"},
               {"t0": t0 + 1.0, "t1": t0 + 1.4, "out": "ok"}]
    s = plot.series(records, t0, 2.0, 1.0)
    assert s.ok_per_s == [1.0, 1.0]
    assert s.error_pct == [50.0, 0.0]
    assert round(s.p99_ms[0]) == 200 and round(s.p50_ms[1]) == 400
    assert plot.percentile([], 0.5) == 0.0
