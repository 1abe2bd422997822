"""Running an app under bubblewrap in its own network namespace.

An isolated app sees the same filesystem but only its own loopback interface: nothing
it listens on over TCP is reachable from the host. It is reached only through its unix
socket, which lives in the user's 0700 socket directory, so other Unix users on a
shared login node cannot connect to it either. An app that can only listen on TCP gets
:mod:`hpcgate.lab.apps.bridge` in front of it inside the namespace, which offers its
port as that unix socket.

``isolate_network: auto`` (TensorBoard, MLflow) isolates where bubblewrap works and
otherwise runs the app on ``127.0.0.1``, saying so in the app's log: unprivileged user
namespaces are switched off on some HPC nodes.
"""

from __future__ import annotations

import asyncio
import shutil
import sys

#: bubblewrap path -> None if it works here, else why not (checked once per path)
_USABLE: dict[str, str | None] = {}
_USABLE_LOCK = asyncio.Lock()


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


def bridged_argv(argv: list[str], socket_path: str, port: int) -> list[str]:
    """``argv`` behind the unix-socket bridge (to be wrapped by :func:`bwrap_argv`)."""
    return [sys.executable, "-m", "hpcgate.lab.apps.bridge", socket_path, str(port), "--", *argv]


async def bwrap_unusable(bwrap: str = "bwrap") -> str | None:
    """``None`` if ``bwrap`` can create a network namespace here, else the reason."""
    # one check per path for the server's lifetime; the lock keeps concurrent app
    # starts from running it twice
    async with _USABLE_LOCK:
        if bwrap not in _USABLE:
            _USABLE[bwrap] = await _try_bwrap(bwrap)
        return _USABLE[bwrap]


async def _try_bwrap(bwrap: str) -> str | None:
    try:
        argv = bwrap_argv(["true"], "-", bwrap)
    except IsolationUnavailable:
        return f"bubblewrap ({bwrap!r}) is not installed"
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    except (OSError, TimeoutError) as exc:
        return f"bubblewrap could not run: {exc}"
    if proc.returncode != 0:
        return "bubblewrap cannot create a network namespace here: " + err.decode(errors="replace").strip()[-300:]
    return None
