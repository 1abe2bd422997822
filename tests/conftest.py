"""Shared pytest set-up: where test artefacts go, and the session fixtures of the real
components several test folders use.

- ``sandbox``: the machine's sandbox cluster (:class:`hpcgate.sandbox.Sandbox`; its
  ``info`` is a :class:`hpcgate.sandbox.SandboxInfo`: addresses, accounts, keys, catalog
  path, venv), built once per session. Several pytest sessions may use it at once
  (:meth:`Sandbox.hold`/:meth:`Sandbox.release`): the last session out removes the
  sandbox if a test session brought it up; a sandbox started with ``hpcgate sandbox up``
  stays up. Set ``HPCGATE_SANDBOX_KEEP=1`` to keep it, e.g. to look around after a
  failure. Without root, or without the Debian packages, its tests are skipped with
  the reason.
- ``sshd``: a real OpenSSH sshd on loopback (:mod:`harness.sshd`) for the remote,
  backend and tunnel tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.missing import not_installed
from harness.sandbox import sandbox_missing
from harness.sshd import running_sshd
from hpcgate.sandbox import Sandbox
from tests.pgtools import postgres  # noqa: F401  (a PostgreSQL server, started on first use)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save artefacts; CI keeps the folder (HPCGATE_ARTIFACTS overrides)."""
    path = Path(os.environ.get("HPCGATE_ARTIFACTS", ROOT / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def sandbox():
    why = sandbox_missing()
    if why:
        not_installed(why)
    cluster = Sandbox()
    cluster.hold()
    yield cluster
    cluster.release(keep=os.environ.get("HPCGATE_SANDBOX_KEEP") == "1")


def _sshd_missing() -> str:
    if os.geteuid() != 0:
        return "the remote tests create Unix accounts and run sshd: they need root"
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("useradd"):
        return "openssh-server is not installed (scripts/install-system-deps.sh installs it)"
    return ""


@pytest.fixture(scope="session")
def sshd():
    why = _sshd_missing()
    if why:
        print(f"skipping the remote tests: {why}")
        not_installed(why)
    with running_sshd() as server:
        yield server
