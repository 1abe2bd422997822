"""Running commands and handling daemons by PID, with errors that name what failed."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..files import write_atomic


class SandboxError(RuntimeError):
    """Building, starting or stopping a part of the sandbox failed; the text says which."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell), capture its output as text.

    With ``check`` a non-zero exit or a timeout raises :class:`SandboxError` naming
    ``what`` (default: the command) and the command's stderr.
    """
    argv = [str(a) for a in argv]
    label = what or " ".join(argv)
    try:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise SandboxError(f"{label}: {argv[0]} is not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        if check:
            raise SandboxError(f"{label}: no answer within {timeout:g} s") from exc
        return subprocess.CompletedProcess(argv, -1, "", f"timed out after {timeout:g} s")
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise SandboxError(f"{label}: exit status {result.returncode}: {detail or '(no output)'}")
    return result


def wait_until(
    predicate: Callable[[], object], what: str, timeout: float = 30, interval: float = 0.1
) -> object:
    """Call ``predicate`` until it returns something true; return that value.

    Raises :class:`SandboxError` ``"timed out after N s waiting for <what>"``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SandboxError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (zombies are reaped if ours)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def read_pid_file(path: Path) -> int | None:
    """The PID in ``path``, or ``None`` when the file is missing or not a number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def stop_pid(pid: int, what: str, timeout: float = 10) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL; wait until gone."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_until(lambda: not pid_alive(pid), f"{what} (pid {pid}) to exit after SIGKILL", 5)


def kill_pids(pids: Sequence[int], what: str) -> None:
    """SIGKILL every PID at once, then wait until all are gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(pid_alive(p) for p in pids), f"{what} to exit", 10)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` from this namespace succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pids_of_users(uids: set[int]) -> list[int]:
    """PIDs of live processes whose real UID is one of ``uids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if uid in uids and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically with ``mode`` (created with that mode)."""
    write_atomic(path, text, mode)


def make_dir(path: Path, mode: int = 0o755, owner: str | None = None) -> Path:
    """Create ``path`` (and parents) and set its mode and, if given, owner user/group."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path
