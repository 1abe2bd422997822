"""The ``local`` backend: servers as processes of the hub host.

Each server is ``hpcgate-singleuser`` in its own session (so a hub restart with
``cleanup_servers = False`` leaves it running), in a working directory per user, with its
output in ``<state_dir>/logs/<account>/<server>.log`` (0600 in a 0700 directory). The
job id is the PID; the handle also keeps the process start time from ``/proc`` so that a
recycled PID is never mistaken for the server after a restart.

The server runs as the hub's own Unix account, so it gets that account's session
environment (:func:`session_environment`): ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL``
from the password database, the hub's ``PATH`` (with the server program's directory
first, as an activated virtual environment has it) and its locale, time zone and
``TMPDIR``. Nothing else of the hub's environment (proxy token, cookie secret, database
URL) reaches the server; the spawner's own variables (``JUPYTERHUB_*``, ``HPCGATE_*``,
``Spawner.environment``) come on top.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ... import protocol
from ...files import private_dir
from ...remote import AccountName, render_path
from .base import Backend, JobHandle, JobSpec, JobState, JobStatus, SubmitError


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat);
    None if there is no such process or it has ended and waits to be reaped (a zombie:
    a server killed after a hub restart left it to init, which reaps it when it gets to it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after it
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def tail_file(path: str | os.PathLike[str], nbytes: int) -> str:
    """The last ``nbytes`` of a file as text, ``""`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


#: Variables of the hub's environment that describe the session, not the hub: passed on.
SESSION_VARIABLES = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def session_environment(program: str) -> dict[str, str]:
    """The environment a user of this host expects, for a server running ``program``.

    ``HOME``, ``USER``, ``LOGNAME``, ``SHELL`` of the current Unix account; ``PATH``,
    ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR`` as the hub has them. An
    absolute ``program`` puts its directory first on ``PATH`` (the server's Python
    environment, so ``pip`` and ``jupyter`` in a notebook are that environment's). No
    locale at all becomes ``LANG=C.UTF-8``.
    """
    account = pwd.getpwuid(os.getuid())
    env = {
        "HOME": account.pw_dir,
        "USER": account.pw_name,
        "LOGNAME": account.pw_name,
        "SHELL": account.pw_shell or "/bin/sh",
    }
    env.update(
        (name, value)
        for name, value in os.environ.items()
        if name in SESSION_VARIABLES or name.startswith("LC_")
    )
    path = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if d]
    if os.path.isabs(program):
        here = os.path.dirname(program)
        path = [here, *(d for d in path if d != here)]
    env["PATH"] = os.pathsep.join(path)
    if not any(env.get(name) for name in ("LANG", "LC_ALL", "LC_CTYPE")):
        env["LANG"] = "C.UTF-8"  # as the environment files of ssh and slurm servers do
    return env


class LocalBackend(Backend):
    kind = "local"
    needs_tunnel = False
    #: Seconds between SIGTERM and SIGKILL when stopping a server.
    stop_grace = 5.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # our own children, for exit codes; servers adopted after a restart are not here
        self._children: dict[str, asyncio.subprocess.Process] = {}

    def _log_path(self, account: AccountName, server_name: str) -> Path:
        logs = private_dir(Path(self.context.state_dir) / "logs" / AccountName(account))
        return logs / f"{server_name or 'default'}.log"

    def server_command(self, command: Sequence[str]) -> list[str]:
        """``hpcgate-singleuser`` runs with the hub's own Python (the same installation)."""
        if list(command) == ["hpcgate-singleuser"]:
            return [sys.executable, "-m", "hpcgate.singleuser"]
        return list(command)

    async def submit(self, spec: JobSpec) -> JobHandle:
        try:
            workdir = Path(
                render_path(self.system.workdir, account=spec.account, state_dir=self.context.state_dir)
            )
        except ValueError as exc:
            raise SubmitError(f"The working directory of this system cannot be used: {exc}.") from exc
        try:
            private_dir(workdir)
        except OSError as exc:
            raise SubmitError(f"Cannot create the working directory {workdir}: {exc.strerror}.") from exc
        try:
            log_path = self._log_path(spec.account, spec.server_name)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise SubmitError(f"Cannot create the server's log file: {exc}.") from exc
        command = list(spec.command)
        env = {
            **session_environment(command[0]),
            **spec.env,
            protocol.BIND_IP: "127.0.0.1",
            protocol.REPORT_HOST: "127.0.0.1",
        }
        if os.geteuid() == 0 and "--allow-root" not in command:
            # a hub run as root (containers, CI) runs its local servers as root too
            command.append("--allow-root")
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                env=env,
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise SubmitError(f"Cannot start {spec.command[0]}: {exc.strerror}.") from exc
        finally:
            os.close(fd)
        job_id = str(proc.pid)
        self._children[job_id] = proc
        return JobHandle(
            job_id=job_id,
            extra={"start_time": _start_time(proc.pid), "log": str(log_path), "workdir": str(workdir)},
        )

    def _one_status(self, handle: JobHandle) -> JobStatus:
        child = self._children.get(handle.job_id)
        if child is not None:
            if child.returncode is None:
                return JobStatus(JobState.RUNNING, node="localhost")
            return JobStatus(JobState.DONE, exit_code=child.returncode)
        started = _start_time(int(handle.job_id))
        if started is not None and started == handle.extra.get("start_time"):
            return JobStatus(JobState.RUNNING, node="localhost")
        return JobStatus(JobState.DONE)

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        answer = {h.job_id: self._one_status(h) for h in handles}
        return {k: v for k, v in answer.items() if v.state is not JobState.DONE or k in self._children}

    async def cancel(self, handle: JobHandle) -> None:
        pid = int(handle.job_id)
        if self._one_status(handle).state is not JobState.RUNNING:
            self._children.pop(handle.job_id, None)
            return
        for sig, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            if await self._wait_gone(handle, wait):
                break
        self._children.pop(handle.job_id, None)

    async def _wait_gone(self, handle: JobHandle, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._one_status(handle).state is not JobState.RUNNING:
                return True
            await asyncio.sleep(0.05)
        return False

    async def log_tail(self, handle: JobHandle, nbytes: int = 4096) -> str:
        path = handle.extra.get("log")
        return tail_file(path, nbytes) if path else ""
