"""Compiles the gateway's relay path to C with mypyc, in place.

    python scripts/compile_gateway.py          # build gateway/*.so next to the sources
    python scripts/compile_gateway.py --clean  # remove them (the gateway runs as Python)

The modules every relayed call runs through (`gateway.wire`, `gateway.upstream`,
`gateway.proxy`) are type-checked Python; mypyc turns them into a C extension that runs the
same code in about half the user-space CPU (bench/RESULTS.md, session 6). Python imports a
compiled module before its source, so a compiled module older than its source would run
stale code: `gateway/__init__.py` refuses that, and `make` rebuilds whenever a source
changes. Without a C compiler this fails, and so do the make targets that run it; the gateway
itself still runs as plain Python, only slower, when nothing was compiled.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["gateway/wire.py", "gateway/upstream.py", "gateway/proxy.py"]
# The C runtime the three modules share becomes gateway/native__mypyc*.so.
GROUP = "gateway.native"


def compiled_files() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "gateway", "*.so")))


def clean() -> None:
    for path in compiled_files():
        os.remove(path)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    # setuptools reads the project's pyproject.toml too, and warns of its beta support.
    warnings.filterwarnings("ignore", module="setuptools")
    setup(
        name="glammp-gateway-native",
        ext_modules=mypycify(SOURCES, group_name=GROUP, target_dir="build/mypyc"),
        script_args=["--quiet", "build_ext", "--inplace", "--force",
                     "--build-temp", "build/mypyc/temp"],
    )
    # Copied in place with the build's times; stamped now, so they are newer than the sources
    # they were built from (what gateway/__init__.py checks).
    for path in compiled_files():
        os.utime(path)


def main() -> int:
    os.chdir(ROOT)
    if sys.argv[1:] == ["--clean"]:
        clean()
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    build()
    print("compiled:", " ".join(os.path.relpath(p, ROOT) for p in compiled_files()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
