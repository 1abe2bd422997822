"""The shipped systemd units pass `systemd-analyze verify` (Debian's systemd; no systemd as
PID 1 is needed for it), with their installed paths mapped to this checkout so that the
executables they name exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from unittools import UNITS, localized

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNIT_NAMES = ["hpcgate-hub.service", "hpcgate-proxy.service"]


@pytest.fixture(scope="module")
def local_units(tmp_path_factory):
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; scripts/install-system-deps.sh)")
    directory = tmp_path_factory.mktemp("units")
    for name in UNIT_NAMES:
        (directory / name).write_text(localized((UNITS / name).read_text()))
    return directory


def test_units_verify_clean(local_units):
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", *(str(local_units / n) for n in UNIT_NAMES)],
                       capture_output=True, text=True)
    # a misspelt key is only a warning (exit 0): any output at all fails the test
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr + r.stdout


def test_verify_would_catch_a_broken_unit(local_units, tmp_path):
    broken = tmp_path / "hpcgate-proxy.service"
    broken.write_text((local_units / "hpcgate-proxy.service").read_text().replace("UMask=", "UMsk=", 1))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(broken)], capture_output=True, text=True)
    assert "Unknown key" in r.stderr


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_are_hardened(local_units, name):
    """`systemd-analyze security --offline` rates each unit's sandboxing (10 = none, 0 = best)."""
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(local_units / name)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exposure = float(r.stdout.rsplit("Overall exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert exposure <= 2.5, r.stdout[-3000:]
