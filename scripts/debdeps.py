"""Install the Debian packages glammp needs that are missing, or name them when not root.

Usage: python3 scripts/debdeps.py PACKAGE...

Runs `apt-get update` at most once per run and only when something is missing, so a machine
that already has everything pays one dpkg query.
"""

import os
import subprocess
import sys


def missing(packages: list[str]) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]}
    return [p for p in packages if p not in installed]


def main(packages: list[str]) -> int:
    need = missing(packages)
    if not need:
        return 0
    if os.geteuid() != 0:
        print(
            "glammp needs these Debian packages; install them as root:\n"
            f"  apt-get install -y {' '.join(need)}",
            file=sys.stderr,
        )
        return 1
    print(f"installing Debian packages: {' '.join(need)}", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
