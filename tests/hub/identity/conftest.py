"""Fixtures for the identity tests: a real slapd on loopback (free port, temp dir)."""

from __future__ import annotations

import os
import shutil

import pytest

from harness.missing import not_installed
from hpcgate.net import free_port
from hpcgate.sandbox.directory import SLAPD, Directory


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """slapd with alice (ml-team, physics), bob (physics), carol (astro); stopped by PID."""
    if not os.path.exists(SLAPD) or not shutil.which("ldapmodify"):
        not_installed("slapd/ldap-utils are not installed (scripts/install-system-deps.sh installs them)")
    d = Directory(tmp_path_factory.mktemp("slapd"), free_port())
    d.build()
    d.start()
    yield d
    d.stop()
