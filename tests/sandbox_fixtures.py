"""The session fixture ``sandbox``: the machine's sandbox cluster, built once per session.

Integration tests build their cluster only through :mod:`hpcgate.sandbox` and get it
from here. The fixture yields a :class:`hpcgate.sandbox.Sandbox` (``sandbox.info`` is a
:class:`hpcgate.sandbox.SandboxInfo`: addresses, accounts, keys, catalog path, venv).

Several pytest sessions may use it at once (:meth:`Sandbox.hold`/:meth:`Sandbox.release`):
the last session out removes the sandbox if a test session brought it up; a sandbox
started with ``hpcgate sandbox up`` stays up. Set ``HPCGATE_SANDBOX_KEEP=1`` to keep it,
e.g. to look around after a failure. Without root, or without the Debian packages, the
tests that use it are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest

from hpcgate.sandbox import Sandbox, packages


def sandbox_missing() -> str:
    """Why the sandbox cannot be built here, or ``""``."""
    if os.geteuid() != 0:
        return "the sandbox creates network namespaces, accounts and daemons: it needs root"
    missing = packages.missing()
    if missing:
        return (
            f"missing Debian packages {', '.join(missing)} (scripts/install-system-deps.sh or "
            "`hpcgate sandbox up` installs them)"
        )
    return ""


@pytest.fixture(scope="session")
def sandbox():
    why = sandbox_missing()
    if why:
        pytest.skip(why)
    cluster = Sandbox()
    cluster.hold()
    yield cluster
    cluster.release(keep=os.environ.get("HPCGATE_SANDBOX_KEEP") == "1")
