"""Metrics: counting, merging across processes, and the exposition format."""

from __future__ import annotations

from services.core import metrics


def test_observe_merge_and_render(tmp_path):
    a, b = metrics.Metrics(), metrics.Metrics()
    a.observe(("Cache", "get"), 0, 0.0002)
    a.observe(("Cache", "get"), 503, 0.003)
    b.observe(("Cache", "get"), 0, 20.0)
    b.incr("frames_refused")
    merged = metrics.merge([a.snapshot(), b.snapshot()])
    flat = metrics.fb303_counters(merged)
    assert flat["Cache.get.requests"] == 3
    assert flat["Cache.get.errors"] == 1 and flat["Cache.get.errors.503"] == 1
    assert flat["glammp.frames_refused"] == 1
    text = metrics.render_prometheus(merged)
    assert 'thrift_server_requests_total{service="Cache",method="get",code="0"} 2' in text
    bucket = 'thrift_server_latency_seconds_bucket{service="Cache",method="get",le='
    assert bucket + '"0.00025"} 1' in text
    assert bucket + '"10.0"} 2' in text
    assert 'thrift_server_latency_seconds_count{service="Cache",method="get"} 3' in text


def test_snapshots_round_trip_through_files(tmp_path):
    m = metrics.Metrics()
    m.observe(("Base", "getStatus"), 0, 0.001)
    metrics.write_snapshot(str(tmp_path), m.snapshot())
    (tmp_path / "metrics-999.json").write_text("{torn")
    snaps = metrics.read_snapshots(str(tmp_path))
    assert len(snaps) == 1
    assert metrics.fb303_counters(metrics.merge(snaps))["Base.getStatus.requests"] == 1
