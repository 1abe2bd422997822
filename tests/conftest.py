"""Shared pytest set-up: where test artefacts (screenshots, logs) go."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from pgtools import postgres  # noqa: E402,F401  (a PostgreSQL server, started on first use)
from sandbox_fixtures import sandbox  # noqa: E402,F401  (the shared session fixture)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save artefacts; CI keeps the folder (HPCGATE_ARTIFACTS overrides)."""
    path = Path(os.environ.get("HPCGATE_ARTIFACTS", ROOT / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
