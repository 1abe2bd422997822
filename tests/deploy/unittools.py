"""Reading the shipped systemd units (docs/deploy/*.service) the way systemd does, enough
for tests: the ExecStart argv (quotes, ``$$`` for a literal ``$``) and Environment=.

Installed paths (``/opt/hpcgate/venv``, ``/opt/hpcgate/node_modules``, ``/etc/hpcgate``)
are mapped to this checkout and the test's directories by :func:`localized`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from harness.hub import ROOT

UNITS = ROOT / "docs" / "deploy"
#: the installed paths the units name, mapped to where this checkout has them
LOCAL_PATHS = {
    "/opt/hpcgate/venv": str(Path(sys.executable).parent.parent),
    "/opt/hpcgate/node_modules": str(ROOT / "node_modules"),
}


def localized(text: str, more: dict[str, str] | None = None) -> str:
    for old, new in {**LOCAL_PATHS, **(more or {})}.items():
        text = text.replace(old, new)
    return text


def unit_values(path: Path, key: str) -> list[str]:
    """The values of ``key=`` lines of a unit (no continuation lines are used in ours)."""
    values = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def exec_start(path: Path, more: dict[str, str] | None = None) -> list[str]:
    """ExecStart's argv: split as systemd does for our units; ``$$`` becomes ``$``."""
    (line,) = unit_values(path, "ExecStart")
    return [word.replace("$$", "$") for word in shlex.split(localized(line, more))]


def environment(path: Path, more: dict[str, str] | None = None) -> dict[str, str]:
    env = {}
    for value in unit_values(path, "Environment"):
        for assignment in shlex.split(localized(value, more)):
            name, _, val = assignment.partition("=")
            env[name] = val
    return env
