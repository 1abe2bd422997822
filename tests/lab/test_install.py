"""What an install of hpcgate enables in every Jupyter server of its environment."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def extension_states() -> dict[str, bool]:
    jupyter = Path(sys.executable).parent / "jupyter"
    out = subprocess.run([str(jupyter), "server", "extension", "list"], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    return {m.group(1): m.group(2) == "enabled" for m in re.finditer(r"^\s+(\S+) (enabled|disabled)$", text, re.M)}


def test_hpcgate_lab_is_enabled_and_replaces_jupyter_server_proxy():
    states = extension_states()
    assert states.get("hpcgate.lab") is True
    # the test extra installs jupyter-server-proxy (its plugins are tested through
    # hpcgate); its own server extension must stay off so /proxy/ is hpcgate's
    assert states.get("jupyter_server_proxy") is False
