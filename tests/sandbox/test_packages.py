"""`hpcgate sandbox up` and the Debian packages it needs (dpkg's real answers).

Nothing here installs a package or builds the sandbox: a package name that exists in
no archive stands in for a missing package.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.missing import unavailable
from hpcgate.sandbox import cli, packages

ABSENT = "hpcgate-no-such-package"


def test_this_machine_has_every_package_the_sandbox_needs():
    # `make test` installs them (scripts/install-system-deps.sh): the lists agree
    assert packages.missing() == []
    listed = (Path(__file__).resolve().parents[2] / "scripts/install-system-deps.sh").read_text()
    for pkg in packages.PACKAGES:
        if pkg != "util-linux":  # essential on Debian: always installed
            assert pkg in listed, f"{pkg} is not in scripts/install-system-deps.sh"


def test_a_missing_package_is_found_and_named_with_the_command(monkeypatch, capsys):
    if os.geteuid() != 0:
        unavailable("hpcgate sandbox up refuses to run without root before it looks at packages", "CI runs as root")
    monkeypatch.setitem(packages.PACKAGES, ABSENT, "a package no archive has")
    assert packages.missing() == [ABSENT]
    assert cli.main(["up", "--no-install"]) == 1
    err = capsys.readouterr().err
    assert f"needs these Debian packages: {ABSENT}" in err
    assert f"apt-get install -y --no-install-recommends {ABSENT}" in err
