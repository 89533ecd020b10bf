"""Runs the test suite with gevent's monkey-patching done before anything else is imported.

`make test` calls `python -m tests`; arguments are passed to pytest.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import pytest  # noqa: E402

sys.exit(pytest.main(sys.argv[1:]))
