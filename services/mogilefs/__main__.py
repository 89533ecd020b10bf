"""`python -m services.mogilefs <mogilefsd|mogstored|mogile-dev> …`: the same subcommands as
`glammp`, usable on their own (the dev cluster starts its children this way)."""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from services.mogilefs.cli import add_commands  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m services.mogilefs")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
