"""hpcgate's own app recipes, registered as ``hpcgate_apps`` entry points.

Each function returns a spec (see :mod:`hpcgate.appspec`) and never fails when
its program is missing: the spec's ``requires`` makes the app show up as unavailable,
with what to install. Every recipe listens on a unix socket in the user's private
runtime directory where its program can, and on ``127.0.0.1`` only where it cannot.
"""

from __future__ import annotations

from pathlib import Path

ICONS = Path(__file__).parent / "icons"


def icon(name: str) -> str:
    """Absolute path of one of the recipes' SVG icons."""
    return str(ICONS / f"{name}.svg")
