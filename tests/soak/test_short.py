"""The short soak: the whole split deployment, 60 s of load, one fault of each kind, and
every invariant must hold. Runs `python -m bench.soak --short` as `make soak` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The run is 60 s of load plus set-up, draining and read-back; this bounds it, in seconds.
RUN_TIMEOUT_S = 400


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_the_short_soak_holds_every_invariant(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--short", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    text = (out / "report.txt").read_text() if (out / "report.txt").exists() else ""
    assert proc.returncode == 0, text or proc.stdout + proc.stderr
    assert "ALL INVARIANTS HELD" in text
    kills = [e for e in map(json.loads, (out / "faults.jsonl").read_text().splitlines())
             if e["action"] == "kill"]
    assert sorted({e["kind"] for e in kills}) == sorted(
        ["memcached", "gearmand", "storage", "tracker", "service", "worker"])
    final = json.loads((out / "final.json").read_text())
    assert final["acked_jobs"] > 0 and final["files"]
    assert (out / "report.svg").read_text().startswith("<svg")
