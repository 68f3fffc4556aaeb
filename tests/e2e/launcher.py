"""`kittiwake` with the test-only modules of `fakes.py` (and the `mx_auth`
policy of `fakepolicy.py`) registered.

e2e tests start this as a real process (`python tests/e2e/launcher.py run -c
FILE`), so the command line, signals and logging are exercised for real
with an endpoint that exists today.
"""

from __future__ import annotations

import sys

import fakepolicy  # noqa: F401  (registers the mx_auth policy test_policy)
import fakes  # noqa: F401  (registers test.echo and test.table)
import tlsrpt_probe  # noqa: F401  (registers test.tlsrpt)

from kittiwake.cli import main

if __name__ == "__main__":
    sys.exit(main())
