"""Fixtures of the remote/tunnel tests: a real sshd on loopback (see sshd.py)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sshd import LoopbackSSHD  # noqa: E402


def _missing() -> str:
    if os.geteuid() != 0:
        return "the remote tests create Unix accounts and run sshd: they need root"
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("useradd"):
        return "openssh-server is not installed (scripts/install-system-deps.sh installs it)"
    return ""


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    why = _missing()
    if why:
        print(f"skipping the remote tests: {why}")
        pytest.skip(why)
    # pytest's temporary directories are 0700; the test accounts must read the
    # authorized keys (sshd reads them as the user) and the fake lab script
    directory = tempfile.mkdtemp(prefix="hpcgate-sshd-")
    server = LoopbackSSHD(Path(directory)).setup()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(directory, ignore_errors=True)
