"""What to do when a test needs something that is not installed.

On a developer's machine the test is skipped with the reason (pytest's ``-ra`` prints
it). In CI (``CI`` set; ``.ci/run`` sets it) ``make test`` installs everything the tests
need, so a missing piece is a missing install step: the test fails with the reason
instead of hiding it as a skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def not_installed(why: str) -> NoReturn:
    """Skip (a developer's machine) or fail (CI) a test that needs what ``why`` names."""
    unavailable(why, "make test installs it, so in CI this is a missing install step")


def unavailable(why: str, in_ci: str) -> NoReturn:
    """Skip with ``why`` on a developer's machine; fail in CI, where it cannot happen for
    the reason ``in_ci`` gives (CI runs as root, alone, after ``make test``'s installs)."""
    print(f"SKIP reason: {why}")
    if os.environ.get("CI"):
        pytest.fail(f"{why}; {in_ci}")
    pytest.skip(why)
