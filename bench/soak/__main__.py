"""`make soak`: the split deployment under load and faults, checked afterwards.

    python -m bench.soak [--duration S] [--short] [--seed N] [--out build/soak]
                         [--drivers N] [--greenlets N] [--think-ms MS] [--faults N]

Exit status 0 when every invariant held, 1 when any was violated (the report says which).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from bench.soak import session  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true",
                   help="the CI variant: 60 s, few callers, one fault of each kind")
    p.add_argument("--duration", type=float, help="seconds of load (default 600; short 60)")
    p.add_argument("--seed", type=int, default=1, help="seeds the load and the faults")
    p.add_argument("--out", default="build/soak", help="report and histories go here")
    p.add_argument("--drivers", type=int, help="driver processes")
    p.add_argument("--greenlets", type=int, help="callers per driver")
    p.add_argument("--think-ms", type=float, help="mean pause between a caller's calls, ms")
    p.add_argument("--faults", type=int, help="faults to inject (default: one per 20 s)")
    args = p.parse_args(argv)
    changes = {k: v for k, v in {
        "duration_s": args.duration, "drivers": args.drivers, "greenlets": args.greenlets,
        "think_ms": args.think_ms, "fault_count": args.faults}.items() if v is not None}
    changes.update(seed=args.seed, out_dir=args.out)
    opts = session.Options.short(**changes) if args.short else session.Options(**changes)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    verdict = session.run(opts)
    return 0 if verdict.held else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
