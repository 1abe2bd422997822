"""Running an app under bubblewrap in its own network namespace.

An isolated app sees the same filesystem but only its own loopback interface: nothing
it listens on over TCP is reachable from the host. It is reached only through its unix
socket, which lives in the user's 0700 socket directory, so other Unix users on a
shared login node cannot connect to it either.
"""

from __future__ import annotations

import shutil


class IsolationUnavailable(RuntimeError):
    """bubblewrap is missing; the message says what to install or change."""


def bwrap_argv(argv: list[str], app_name: str, bwrap: str = "bwrap") -> list[str]:
    """``argv`` wrapped in ``bwrap --unshare-net``.

    The process stays in the caller's process group (no ``--new-session``), so stopping
    the app's group reaches it; ``--die-with-parent`` ends it if bwrap is killed.
    """
    path = shutil.which(bwrap)
    if path is None:
        raise IsolationUnavailable(
            f"app {app_name!r} has isolate_network set, which needs bubblewrap ({bwrap!r}) on PATH: "
            "install the bubblewrap package or set c.HPCGateLab.bwrap_path"
        )
    return [
        path,
        "--dev-bind", "/", "/",
        "--unshare-net",
        "--unshare-ipc",
        "--die-with-parent",
        "--",
        *argv,
    ]
