"""The soak's text report: what ran, what was injected, what failed, what held.

`text(...)` renders a `checker.Verdict` with the run's facts; `load_histories(out_dir)`
reads every driver's JSON lines back (a line cut by a killed driver is skipped and counted).
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.soak.checker import Final, Verdict
from bench.soak.plot import percentile


def load_histories(out_dir: str) -> tuple[list[dict[str, Any]], int]:
    """Every call record under `out_dir` (history-d*.jsonl), and how many lines were cut."""
    records: list[dict[str, Any]] = []
    cut = 0
    for path in sorted(glob.glob(os.path.join(out_dir, "history-d*.jsonl"))):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    cut += 1
    return records, cut


def text(verdict: Verdict, records: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]],
         final: Final, facts: dict[str, Any], start: float) -> str:
    """The report as plain text (also printed at the end of the run); `start` is the load's
    start (wall clock, s), from which fault times are counted."""
    lines = [f"glammp soak: {'ALL INVARIANTS HELD' if verdict.held else 'VIOLATIONS FOUND'}",
             ""]
    for key, value in facts.items():
        lines.append(f"{key}: {value}")
    total = sum(verdict.calls.values())
    ok = verdict.outcomes.get("ok", 0)
    lines += ["", f"calls made: {total} ({ok} ok, {total - ok} failed)"]
    per_op: dict[str, Counter[str]] = {}
    latencies: dict[str, list[float]] = {}
    for r in records:
        per_op.setdefault(r["op"], Counter())[_short(r)] += 1
        latencies.setdefault(r["op"], []).append((r["t1"] - r["t0"]) * 1000)
    for op in sorted(per_op):
        lat = sorted(latencies[op])
        counts = ", ".join(f"{k} {v}" for k, v in per_op[op].most_common())
        lines.append(f"  {op:<11} {sum(per_op[op].values()):>7}  p50 {percentile(lat, .5):7.1f}"
                     f" ms  p99 {percentile(lat, .99):7.1f} ms  max {lat[-1]:7.1f} ms  "
                     f"[{counts}]")
    lines += ["", "failures by code:"]
    failures = [(k, v) for k, v in verdict.outcomes.most_common() if k != "ok"]
    lines += [f"  {k}: {v}" for k, v in failures] or ["  none"]
    kills = [e for e in events if e["action"] == "kill"]
    by_kind = Counter(str(e["kind"]) for e in kills)
    lines += ["", f"faults injected: {len(kills)} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})"]
    for e in events:
        detail = (f"pid {e.get('pid')}" if e["action"] == "kill" else
                  f"back in {e.get('took_s')}s" if e["action"] == "restart" else
                  str(e.get("error", "")))
        lines.append(f"  {float(e['t']) - start:8.2f}s  {e['action']:<14} {e['name']:<16} "
                     f"{detail}")
    lines += ["", "invariants:"]
    for inv in verdict.invariants.values():
        state = "held" if inv.held else f"VIOLATED ({inv.violations})"
        lines.append(f"  {inv.name:<19} {state:<16} checked {inv.checked}")
        lines += [f"      {example}" for example in inv.examples]
    lines += ["", "memory (RSS, MiB) at start -> end, and at each tenth of the load:"]
    for name in sorted(final.rss_start):
        before, after = final.rss_start[name], final.rss_end.get(name)
        during = " ".join(f"{_mib(s.get(name)):>6}" for s in final.rss_during)
        lines.append(f"  {name:<16} {_mib(before):>7} -> {_mib(after):>7}   {during}")
    return "\n".join(lines) + "\n"


def _short(r: dict[str, Any]) -> str:
    if r["out"] == "ok":
        return "ok"
    if r["out"] == "err":
        return str(r["code"])
    return str(r.get("exc"))


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"
