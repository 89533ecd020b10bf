"""Entry point serving tests.core.testapp in its own process (gevent patched first)."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from tests.core.testapp import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
