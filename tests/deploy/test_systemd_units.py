"""The shipped systemd units pass `systemd-analyze verify` (Debian's systemd; no systemd as
PID 1 is needed for it), with their installed paths mapped to this checkout so that the
executables they name exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.missing import not_installed
from tests.deploy.unittools import UNITS, localized

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNIT_NAMES = ["hpcgate-hub.service", "hpcgate-proxy.service"]


@pytest.fixture(scope="module")
def local_units(tmp_path_factory):
    if SYSTEMD_ANALYZE is None:
        not_installed("systemd-analyze is missing (Debian package systemd; scripts/install-system-deps.sh)")
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


def test_the_guides_recipe_for_a_second_hub_gives_valid_units(tmp_path):
    """docs/deployment.md's sed commands for a second hub on the host, run as written
    (into a temp dir instead of /etc/systemd/system), give units that verify and that
    point at the second hub's files, ports and proxy."""
    if SYSTEMD_ANALYZE is None:
        not_installed("systemd-analyze is missing (Debian package systemd; scripts/install-system-deps.sh)")
    guide = (UNITS.parent / "deployment.md").read_text()
    block = guide.split("**Several hubs on one host**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.count("/etc/systemd/system/") == 2
    script = block.replace("/etc/systemd/system/", f"{tmp_path}/")
    subprocess.run(["sh", "-e", "-c", script], cwd=UNITS.parent.parent, check=True)
    hub, proxy = tmp_path / "hpcgate-ai-hub.service", tmp_path / "hpcgate-ai-proxy.service"
    for unit in (hub, proxy):
        unit.write_text(localized(unit.read_text()))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(hub), str(proxy)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    hub_text, proxy_text = hub.read_text(), proxy.read_text()
    assert "/etc/hpcgate/" not in hub_text + proxy_text and "/etc/hpcgate-ai/jupyterhub_config.py" in hub_text
    assert "StateDirectory=hpcgate-ai\n" in hub_text and "Requires=hpcgate-ai-proxy.service" in hub_text
    assert "--port 8100 --api-ip 127.0.0.1 --api-port 8101 --default-target http://127.0.0.1:8181" in proxy_text
