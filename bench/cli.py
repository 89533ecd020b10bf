"""`glammp bench`: the same as `make bench` (`python -m bench`)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and print the table of ratios")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; median reported")
    p.add_argument("suites", nargs="*", help="core, cache, jobs, ... (default: all)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from bench.__main__ import main

    argv = ["--seconds", str(args.seconds), "--rounds", str(args.rounds), *args.suites]
    return main(argv)
