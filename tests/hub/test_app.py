"""hpcgate.hub.app: the hub's entry point."""

from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import subprocess, sys
from hpcgate.hub.app import default_sigint
if sys.argv[1] == "restore":
    default_sigint()
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
mask = int(next(l for l in status.splitlines() if l.startswith("SigIgn:")).split()[1], 16)
print("ignored" if mask & (1 << (2 - 1)) else "default")
"""


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def child_sigint(*modes: str) -> list[str]:
    """How a process started by a hub that inherited SIGINT ignored sees SIGINT, for
    each mode (the children run at once: each imports JupyterHub, seconds of CPU)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, mode], preexec_fn=ignore_sigint,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for mode in modes
    ]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answers.append(out.strip())
    return answers


def test_processes_the_hub_starts_get_sigint_back():
    # the idle culler and local servers are stopped with SIGINT first: a hub started in
    # the background must not hand them SIGINT ignored
    inherited, restored = child_sigint("inherit", "restore")
    assert inherited == "ignored"  # what happens without it
    assert restored == "default"


def test_sqlite_synchronous_is_set_on_every_connection_of_the_hub(tmp_path):
    # a real JupyterHub database set up by HubApp.init_db: the setting reaches the
    # session's connection and connections opened later; unset, SQLite's default stays
    from sqlalchemy import text

    from hpcgate.hub.app import HubApp

    levels = {}
    for setting in ("normal", ""):
        path = tmp_path / f"hub-{setting or 'default'}.sqlite"
        app = HubApp(db_url=f"sqlite:///{path}", sqlite_synchronous=setting)
        app.init_db()
        try:
            first = app.db.execute(text("PRAGMA synchronous")).scalar()
            app.db.close()
            app.db.get_bind().dispose()
            again = app.db.execute(text("PRAGMA synchronous")).scalar()
        finally:
            app.db.close()
            app.db.get_bind().dispose()
        levels[setting] = (first, again)
    assert levels["normal"] == (1, 1), levels  # NORMAL
    assert levels[""] == (2, 2), levels  # FULL, SQLite's default
