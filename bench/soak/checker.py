"""The checker: invariants over the call histories and the state found after the run.

Jepsen-style: the drivers only record what they asked and what they got; this module decides
afterwards, from the records alone plus `Final` (what the end-of-run reads found), whether
the system kept its promises:

==================  =====================================================================
invariant           violated when
==================  =====================================================================
files_durable       an acknowledged `store` is not readable byte-exact at the end
file_reads_exact    a `fetch` during the run answered other bytes than were stored, or 404
                    for a file whose store had been acknowledged
jobs_ran            an acknowledged background job has no run in the workers' record
fg_results_exact    a foreground job answered COMPLETE with data other than its workload
calls_typed         a call ended with anything but a result or a ServiceError (transport
                    error, TApplicationException, socket timeout) at the caller
calls_bounded       a call took longer than its deadline plus `DEADLINE_SLACK_S`
cache_values_valid  a cache read returned bytes that no put for that key ever sent (torn,
                    another key's, garbage); stale values are allowed
memory_bounded      a glammp process's RSS at the end exceeds its RSS at the start by more
                    than `RSS_GROWTH_LIMIT_KIB`, or is over `RSS_LIMIT_KIB`
progress            an operation kind never succeeded (the run proved nothing about it)
==================  =====================================================================

A put whose outcome was an error still counts as written: the value may have reached
memcached before the connection broke.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.soak import workload

#: How far past its deadline a call may end before it counts as hung, in seconds (the
#: gateway answers 504 at the deadline; this covers scheduling on a loaded 2-core box).
DEADLINE_SLACK_S = 1.5
#: RSS growth allowed per process between the start and the end, in KiB.
RSS_GROWTH_LIMIT_KIB = 256 * 1024
#: RSS no glammp process may exceed at the end, in KiB.
RSS_LIMIT_KIB = 1024 * 1024
#: Violations listed per invariant in the report (all are counted).
MAX_LISTED = 20
OPERATIONS = ("cache.put", "cache.get", "file.store", "file.fetch", "job.bg", "job.fg")


@dataclass
class Final:
    """What the soak found after the load: file key -> "ok" | "mismatch" | an error text;
    the unique ids the workers recorded; RSS in KiB by process name at start and end."""

    files: dict[str, str] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)
    rss_start: dict[str, int | None] = field(default_factory=dict)
    rss_end: dict[str, int | None] = field(default_factory=dict)
    #: RSS of every process at each tenth of the load (to tell growth from a plateau).
    rss_during: list[dict[str, int | None]] = field(default_factory=list)


@dataclass
class Invariant:
    name: str
    checked: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.violations == 0

    def fail(self, text: str) -> None:
        self.violations += 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append(text)


@dataclass
class Verdict:
    invariants: dict[str, Invariant]
    calls: Counter[str]
    outcomes: Counter[str]

    @property
    def held(self) -> bool:
        return all(i.held for i in self.invariants.values())


def outcome(rec: dict[str, Any]) -> str:
    """"ok", "ServiceError <code>" or the exception type of one call."""
    if rec["out"] == "ok":
        return "ok"
    if rec["out"] == "err":
        return f"ServiceError {rec['code']}"
    return str(rec.get("exc", "exception"))


def _desc(rec: dict[str, Any]) -> str:
    return f"{rec['op']} {rec.get('key', '')} by {rec.get('c', '?')} at {rec['t0']:.3f}"


def check(records: Iterable[dict[str, Any]], final: Final) -> Verdict:
    """Every invariant of the module docstring over `records` and `final`."""
    recs = list(records)
    inv = {name: Invariant(name) for name in (
        "files_durable", "file_reads_exact", "jobs_ran", "fg_results_exact", "calls_typed",
        "calls_bounded", "cache_values_valid", "memory_bounded", "progress")}
    written: dict[str, set[tuple[str, int]]] = {}
    for r in recs:
        if r["op"] == "cache.put":
            written.setdefault(r["key"], set()).add((r["w"], int(r["s"])))
    calls: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    succeeded: Counter[str] = Counter()
    for r in recs:
        calls[r["op"]] += 1
        outcomes[outcome(r)] += 1
        _check_call(r, inv, written)
        if r["out"] == "ok":
            succeeded[r["op"]] += 1
            if r["op"] == "file.store":
                _check_stored(r, final, inv["files_durable"])
            elif r["op"] == "job.bg":
                inv["jobs_ran"].checked += 1
                if r["key"] not in final.runs:
                    inv["jobs_ran"].fail(f"{_desc(r)}: acknowledged, never ran")
    for op in OPERATIONS:
        inv["progress"].checked += 1
        if not succeeded[op]:
            inv["progress"].fail(f"{op}: no call succeeded ({calls[op]} made)")
    _check_memory(final, inv["memory_bounded"])
    return Verdict(inv, calls, outcomes)


def _check_call(r: dict[str, Any], inv: dict[str, Invariant],
                written: dict[str, set[tuple[str, int]]]) -> None:
    inv["calls_typed"].checked += 1
    if r["out"] not in ("ok", "err"):
        inv["calls_typed"].fail(f"{_desc(r)}: {r.get('exc')}: {r.get('msg', '')}")
    inv["calls_bounded"].checked += 1
    took = r["t1"] - r["t0"]
    if took > r["dl"] + DEADLINE_SLACK_S:
        inv["calls_bounded"].fail(f"{_desc(r)}: took {took:.3f}s, deadline {r['dl']}s")
    if r["op"] == "file.fetch" and r["out"] == "err" and r["code"] == 404:
        # Drivers only fetch keys whose store was acknowledged: 404 means it was lost.
        inv["file_reads_exact"].checked += 1
        inv["file_reads_exact"].fail(f"{_desc(r)}: 404 for an acknowledged file")
    if r["out"] != "ok":
        return
    if r["op"] == "cache.get" and r.get("found"):
        inv["cache_values_valid"].checked += 1
        raw = str(r.get("val", "")).encode("latin-1")
        parsed = workload.parse_cache_value(r["key"], raw)
        if parsed is None:
            inv["cache_values_valid"].fail(f"{_desc(r)}: torn or foreign value {raw[:60]!r}")
        elif parsed not in written.get(r["key"], set()):
            inv["cache_values_valid"].fail(f"{_desc(r)}: {parsed} was never written")
    elif r["op"] == "file.fetch":
        inv["file_reads_exact"].checked += 1
        if not r.get("match"):
            inv["file_reads_exact"].fail(f"{_desc(r)}: bytes differ from those stored")
    elif r["op"] == "job.fg":
        inv["fg_results_exact"].checked += 1
        if not r.get("match"):
            inv["fg_results_exact"].fail(f"{_desc(r)}: COMPLETE with the wrong data")


def _check_stored(r: dict[str, Any], final: Final, inv: Invariant) -> None:
    inv.checked += 1
    found = final.files.get(r["key"], "never read back")
    if found != "ok":
        inv.fail(f"{_desc(r)}: acknowledged, at the end {found}")


def _check_memory(final: Final, inv: Invariant) -> None:
    for name, start in sorted(final.rss_start.items()):
        end = final.rss_end.get(name)
        inv.checked += 1
        if start is None or end is None:
            inv.fail(f"{name}: RSS unknown (start {start}, end {end} KiB)")
        elif end > start + RSS_GROWTH_LIMIT_KIB or end > RSS_LIMIT_KIB:
            inv.fail(f"{name}: RSS {start} KiB at the start, {end} KiB at the end")
