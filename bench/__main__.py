"""`make bench`: runs every benchmark suite and prints one table of ratios.

    python -m bench [--seconds S] [--rounds N] [SUITE ...]

Suites are modules of this package with a `rows(seconds, rounds)` function; by default all
of them run. Every number is measured in this run, against a baseline in this run.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from bench.harness import machine, table  # noqa: E402

SUITES = ["core", "cache", "jobs", "mogilefs", "filestore", "gateway"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; median reported")
    p.add_argument("suites", nargs="*", default=SUITES)
    args = p.parse_args(argv)
    rows = []
    for name in args.suites:
        try:
            suite = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                continue
            raise
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += suite.rows(args.seconds, args.rounds)
    print(f"Machine: {machine()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
