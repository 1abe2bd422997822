"""Finding every process an app left behind, including those that left its session.

Some programs detach helpers into new sessions (``ssh-agent`` calls ``setsid``; Xpra
starts ``ssh-agent x-terminal-emulator`` through ``Xsession``), so killing the app's
process group is not enough. Each app start gets a tag in the environment
(``HPCGATE_APP_TAG``); children inherit it across ``setsid`` and re-parenting, and
:func:`tagged_pids` finds them in ``/proc``. The tag is not a secret: it only names
processes, and only the user's own processes are readable or signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

TAG_VAR = "HPCGATE_APP_TAG"


def tagged_pids(tag: str, proc: str = "/proc") -> list[int]:
    """PIDs of live processes whose environment holds ``HPCGATE_APP_TAG=<tag>``."""
    needle = f"{TAG_VAR}={tag}".encode()
    me = os.getpid()
    found = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or another user's process
            continue
        if state != "Z" and needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


async def kill_tagged(tag: str, grace: float) -> list[int]:
    """SIGTERM every tagged process, SIGKILL those left after ``grace`` s; returns the PIDs seen."""
    seen = tagged_pids(tag)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = tagged_pids(tag)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while tagged_pids(tag) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    return seen


def kill_tagged_now(tag: str) -> None:
    """Synchronous SIGKILL of every tagged process (interpreter exit)."""
    for pid in tagged_pids(tag):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
