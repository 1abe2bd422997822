"""The sandbox's daemons by name: their executables and their recorded PIDs.

A PID from a pid file counts only while that process still runs the daemon's
executable: after a reboot (``run_dir`` is not a tmpfs on every machine) a stale pid
file may name an unrelated process, which must never be signalled.
"""

from __future__ import annotations

import os

from . import layout as L
from .proc import pid_alive, read_pid_file, stop_pid

EXECUTABLES = {
    "munged": "/usr/sbin/munged",
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
    "sshd": "/usr/sbin/sshd",
    "slurmdbd": "/usr/sbin/slurmdbd",
    "mariadbd": "/usr/sbin/mariadbd",
}
#: Order in which ``down`` stops them.
STOP_ORDER = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "sshd", "munged")


def executable_of(pid: int) -> str:
    """The resolved executable of process ``pid``, ``""`` if unknown."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def daemon_pid(lay: L.Layout, daemon: str) -> int | None:
    """PID of the running sandbox ``daemon`` (from its pid file), else ``None``."""
    pid = read_pid_file(lay.pid_file(daemon))
    if not pid or not pid_alive(pid):
        return None
    return pid if executable_of(pid) == os.path.realpath(EXECUTABLES[daemon]) else None


def stop_daemon(lay: L.Layout, daemon: str) -> None:
    """Stop ``daemon`` by its recorded PID (TERM, then KILL) and remove its pid file."""
    pid = daemon_pid(lay, daemon)
    if pid is not None:
        stop_pid(pid, daemon)
    lay.pid_file(daemon).unlink(missing_ok=True)
