"""Mutation check: change each reply code the server writes, see a test fail.

Usage: python scripts/mutate_replies.py

For every SMTP reply code in `server/transaction.py`, `server/errors.py`
and the address reply table (`address/errors.py`), the script changes the
code to another one of the same class (the digit after the first goes up
by one), runs the tests that pin replies, and reports whether at least one
failed ("caught") or all passed ("MISSED"). The source is restored after
every run, whatever happens. It exits 1 if any mutation was missed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "src/kittiwake/server/transaction.py",
    "src/kittiwake/server/errors.py",
    "src/kittiwake/address/errors.py",
]
TESTS = [
    "tests/units/test_address.py",
    "tests/e2e/test_replies.py",
    "tests/e2e/test_smtp.py::test_unexpected_errors_are_temporary",
]
# A reply code as the code writes it: the first argument of Reply(...) or
# SMTPError(...), or the first element of a REPLIES entry.
CODE = re.compile(r"(?:Reply\(|SMTPError\(|\(\s*|: \(\n\s*)([245][0-9][0-9]),")


def mutated(code: str) -> str:
    return code[0] + str((int(code[1]) + 1) % 10) + code[2]


def run_tests() -> bool:
    """True if every test passed."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def main() -> int:
    missed = 0
    for name in FILES:
        path = ROOT / name
        original = path.read_text()
        for match in CODE.finditer(original):
            code = match.group(1)
            start = match.start(1)
            line = original.count("\n", 0, start) + 1
            changed = original[:start] + mutated(code) + original[start + 3 :]
            try:
                path.write_text(changed)
                passed = run_tests()
            finally:
                path.write_text(original)
            verdict = "MISSED" if passed else "caught"
            missed += passed
            print(f"{verdict}  {name}:{line}  {code} -> {mutated(code)}", flush=True)
    print(f"{missed} mutation(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
