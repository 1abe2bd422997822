"""Lifecycle of the apps behind the proxy: start, readiness, restart, stop, idle stop.

Contracts:

* Every change of an app's state happens under that app's ``asyncio.Lock``. Requests
  that arrive while an app starts wait on the lock and then find it running, so one
  burst of first requests starts one process, not many.
* An app runs in its own session (``start_new_session``); stopping sends SIGTERM to
  the whole process group, waits ``stop_timeout`` and then sends SIGKILL.
* The last ``log_tail_bytes`` of each app's combined stdout/stderr are kept in memory.
* A crash (or, with ``restart: always``, a clean exit) restarts the app with backoff,
  at most ``max_restarts`` times in a row; after that it stays ``failed``.
* Stopping also ends every process that carries the start's environment tag, even
  those that moved to another session (see :mod:`.reaper`): nothing survives a stop.
* An app whose ``requires`` programs are missing is never started; its info says
  what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...appspec import AppSpec, render
from ...net import free_port
from ..upstream import ForeignSocketError, Target, UpstreamError, encode_head, open_connection, read_response_head
from .isolation import bridged_argv, bwrap_argv, bwrap_unusable
from .launch import ParameterError, base_environ, create_directories, missing_programs, resolve_parameters, with_setup
from .reaper import TAG_VAR, kill_tagged, kill_tagged_now

log = logging.getLogger(__name__)


class AppState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


class AppStartError(RuntimeError):
    """An app did not become ready; the message says why and points to its log."""


class AppRequestError(AppStartError):
    """A start or restart refused before anything was touched (no file, no process):
    ``status`` 400 for a bad parameter, 503 for an app whose programs are missing."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LogTail:
    """The last ``limit`` bytes written to it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def text(self) -> str:
        return self._buf.decode("utf-8", "replace")


class ManagedApp:
    """One app and its process. Only :class:`AppManager` creates these."""

    def __init__(self, spec: AppSpec, manager: AppManager):
        self.spec = spec
        self.manager = manager
        self.state = AppState.STOPPED
        self.proc: asyncio.subprocess.Process | None = None
        self.port = spec.port
        self.unix_socket: str | None = spec.unix_socket if isinstance(spec.unix_socket, str) else None
        #: the last start ran in its own network namespace / put a TCP app behind the bridge
        self.isolated = False
        self.bridged = False
        self.started_at: float | None = None
        self.last_activity: float | None = None
        self.exit_code: int | None = None
        self.error = ""
        self.restarts = 0
        self.log = LogTail(manager.log_tail_bytes)
        # Serialises start/stop/restart and every state change they make.
        self.lock = asyncio.Lock()
        self.params: dict[str, str] = {}
        self.missing: list[dict[str, str]] | None = None  # None: not checked yet
        self._tag = ""
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ views

    @property
    def target(self) -> Target:
        if self.spec.unix_socket or self.bridged:
            return Target(unix_socket=self.unix_socket or self._socket_path())
        return Target(host="localhost", port=self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    @property
    def app_dir(self) -> str:
        """A private directory for this instance's runtime files (sockets, X authority)."""
        return str(Path(self.manager.socket_dir) / f"{self.spec.name}.d")

    def template_args(self) -> dict[str, Any]:
        return {
            **self.params,
            "port": self.port,
            "unix_socket": self.unix_socket or "",
            "base_url": self.manager.base_url,
            "app_dir": self.app_dir,
            "app_name": self.spec.name,
        }

    def info(self) -> dict[str, Any]:
        """What the REST API reports about this app."""
        now = time.time()
        return {
            "name": self.spec.name,
            "state": self.state.value,
            "managed": self.spec.managed,
            "pid": self.pid,
            "uptime": round(now - self.started_at, 3) if self.started_at and self.state == AppState.RUNNING else None,
            "last_activity": self.last_activity,
            "url": self.manager.base_url + self.spec.name + "/",
            "port": None if self.target.unix_socket else self.port or None,
            "unix_socket": self.unix_socket,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
            "error": self.error,
            "isolated": self.isolated,
            "launcher_entry": self.spec.launcher(),
            "new_browser_tab": self.spec.new_browser_tab,
            "source": self.spec.source,
            "family": self.spec.family or self.spec.name,
            "instances": self.spec.instances,
            "available": not self.missing,
            "missing": self.missing or [],
            "parameters": self.spec.parameters,
            "values": self.params,
        }

    def touch(self) -> None:
        self.last_activity = time.time()

    def _socket_path(self) -> str:
        return str(Path(self.manager.socket_dir) / f"{self.spec.name}.sock")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- lifecycle

    async def check_available(self) -> list[dict[str, str]]:
        """The missing ``requires`` programs (checked once, then cached)."""
        if self.missing is None:
            self.missing = await missing_programs(self.spec, self.manager.setup + self.spec.setup)
        return self.missing

    def _resolve(self, params: dict[str, Any] | None) -> dict[str, str]:
        try:
            return resolve_parameters(self.spec, params, self.manager.cwd)
        except ParameterError as exc:
            raise AppRequestError(400, str(exc)) from None

    async def check_request(self, params: dict[str, Any] | None) -> dict[str, str] | None:
        """Validate a start or restart before it touches anything: the app's programs are
        there (else 503) and ``params`` are valid (else 400), as :class:`AppRequestError`.
        Returns the resolved parameters (None when none were given)."""
        missing = await self.check_available()
        if missing:
            raise AppRequestError(
                503,
                f"{self.spec.name} is not available here: "
                + "; ".join(f"{m['program']} is missing ({m['install']})" for m in missing),
            )
        return None if params is None else self._resolve(params)

    async def ensure_running(self, params: dict[str, Any] | None = None) -> None:
        """Return once the app is running, starting it if needed (raises AppStartError).

        ``params`` (the spec's ``parameters``) apply when this call starts the app.
        Everything is validated (:meth:`check_request`) before a file or a process is made.
        """
        if not self.spec.managed or (self.state == AppState.RUNNING and self.pid is not None):
            return
        resolved = await self.check_request(params)
        self.manager.start_idle_checker()
        async with self.lock:
            if self.state == AppState.RUNNING and self.pid is not None:
                return
            if resolved is not None or not self.params:
                self.params = resolved if resolved is not None else self._resolve(None)
            self.restarts = 0
            await self._start_locked()

    async def start(self, params: dict[str, Any] | None = None) -> None:
        await self.ensure_running(params)

    async def stop(self, reason: str = "requested") -> None:
        async with self.lock:
            await self._stop_locked(reason)

    async def restart(self, params: dict[str, Any] | None = None) -> None:
        """Stop and start again; a refused request (:meth:`check_request`) leaves the
        running app running and creates nothing."""
        resolved = await self.check_request(params)
        async with self.lock:
            params_now = resolved if resolved is not None else (self.params or self._resolve(None))
            self.params = params_now
            await self._stop_locked("restart requested")
            self.restarts = 0
            await self._start_locked()

    def _count(self, failed: bool) -> None:
        metrics = self.manager.metrics
        if metrics is not None:
            (metrics.app_failures if failed else metrics.app_starts).labels(self.spec.name).inc()

    async def _start_locked(self) -> None:
        spec = self.spec
        self._count(failed=False)
        self.state = AppState.STARTING
        self.error = ""
        self.exit_code = None
        self._stopping = False
        await self._choose_isolation()
        if spec.unix_socket is True or self.bridged:
            self.unix_socket = self._socket_path()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_socket)
        if not spec.unix_socket:
            self.port = spec.port or free_port()
        args = self.template_args()
        self._tag = f"{spec.name}.{secrets.token_hex(8)}"
        try:
            # validated before (check_request): only now, with the start going ahead
            create_directories(spec, self.params)
            os.makedirs(self.app_dir, mode=0o700, exist_ok=True)
            argv = with_setup(render(spec.command, args), self.manager.setup + spec.setup, spec.name)
            env = base_environ()
            env.update({str(k): str(v) for k, v in render(spec.environment, args).items()})
            env[TAG_VAR] = self._tag
            if self.bridged:
                argv = bridged_argv(argv, self.unix_socket or "", self.port)
            if self.isolated:
                argv = bwrap_argv(argv, spec.name, self.manager.bwrap_path)
            self.log.write(f"[hpcgate] starting {spec.name}: {argv!r}\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self.manager.cwd,
                start_new_session=True,
            )
        except Exception as exc:  # bad template, missing binary, missing bwrap: all end as "failed"
            self.state = AppState.FAILED
            self._count(failed=True)
            self.error = f"could not start: {exc}"
            self.log.write(f"[hpcgate] {self.error}\n".encode())
            raise AppStartError(f"{spec.name} {self.error}") from exc
        proc = self.proc
        self._spawn(self._read_output(proc))
        timeout = spec.timeout if spec.timeout is not None else self.manager.default_timeout
        try:
            await self._wait_ready(proc, timeout)
        except AppStartError as exc:
            self.error = str(exc)
            self.log.write(f"[hpcgate] {exc}\n".encode())
            await self._kill_group(proc, self._grace(), self._tag)
            self.state = AppState.FAILED
            self._count(failed=True)
            raise
        self.state = AppState.RUNNING
        self.started_at = time.time()
        self.touch()
        self._spawn(self._watch(proc))

    async def _choose_isolation(self) -> None:
        """Set ``isolated`` and ``bridged`` for this start (``isolate_network: auto``
        falls back to plain TCP where bubblewrap cannot work, and says so)."""
        wanted = self.spec.isolate_network
        if wanted == "auto":
            why_not = await bwrap_unusable(self.manager.bwrap_path)
            if why_not:
                self.log.write(
                    f"[hpcgate] {self.spec.name} runs without network isolation ({why_not}): "
                    "its port on 127.0.0.1 is reachable by other users of this node\n".encode()
                )
            wanted = why_not is None
        self.isolated = bool(wanted)
        self.bridged = self.isolated and not self.spec.unix_socket

    async def _wait_ready(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if proc.returncode is not None:
                raise AppStartError(f"{self.spec.name} exited with code {proc.returncode} before it was ready; see its log")
            try:
                if await self.probe():
                    return
            except ForeignSocketError as exc:
                raise AppStartError(f"{self.spec.name}: its address is taken by another user's process") from exc
            if time.monotonic() + delay > deadline:
                raise AppStartError(f"{self.spec.name} was not ready after {timeout:g} s (raise its timeout if the node is slow)")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def probe(self) -> bool:
        """One readiness check: socket connect, or HTTP GET with an accepted status."""
        try:
            conn = await open_connection(self.target, self.manager.check_owner, timeout=5)
        except ForeignSocketError:
            raise
        except UpstreamError:
            return False
        try:
            http = self.spec.ready_http()
            if http is None:
                return True
            path, accepted = http
            if self.spec.absolute_url and not path.startswith(self.manager.base_url):
                path = self.manager.base_url + self.spec.name + path
            conn.writer.write(encode_head("GET", path, [("Host", "localhost"), ("Connection", "close")]))
            try:
                async with asyncio.timeout(10):
                    resp = await read_response_head(conn, "GET")
            except (UpstreamError, TimeoutError):
                return False
            return resp.status < 500 if accepted is None else resp.status in accepted
        finally:
            conn.close()

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            self.log.write(data)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        async with self.lock:
            if self._stopping or self.proc is not proc:
                return
            ran_for = time.time() - (self.started_at or time.time())
            self.exit_code = code
            self.log.write(f"[hpcgate] {self.spec.name} exited with code {code}\n".encode())
            # Reap whatever else the app left in its process group.
            await self._kill_group(proc, 0, self._tag)
            policy = self.spec.restart
            wants = policy == "always" or (policy == "on-failure" and code != 0)
            if ran_for > 60:
                self.restarts = 0
            if not wants or self.restarts >= self.spec.max_restarts:
                self.state = AppState.STOPPED if code == 0 else AppState.FAILED
                self.error = "" if code == 0 else f"exited with code {code}"
                if wants:
                    self.error += f"; gave up after {self.restarts} restarts"
                return
            self.restarts += 1
            self.state = AppState.STARTING
        await asyncio.sleep(min(0.5 * 2 ** (self.restarts - 1), 30))
        async with self.lock:
            if self._stopping or self.proc is not proc:
                return
            with contextlib.suppress(AppStartError):
                await self._start_locked()

    def _grace(self) -> float:
        return self.spec.stop_timeout if self.spec.stop_timeout is not None else self.manager.stop_grace_period

    async def _stop_locked(self, reason: str) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None:
            self.log.write(f"[hpcgate] stopping {self.spec.name} ({reason})\n".encode())
            await self._kill_group(proc, self._grace(), self._tag)
            self.exit_code = proc.returncode
        if (self.spec.unix_socket is True or self.bridged) and self.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_socket)
        self.state = AppState.STOPPED
        self.started_at = None

    @staticmethod
    async def _kill_group(proc: asyncio.subprocess.Process, grace: float, tag: str = "") -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap the leader;
        then the same for every process still carrying the start's ``tag``."""
        pgid = proc.pid  # start_new_session made the leader's pid the group id
        if grace > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        await proc.wait()
        if tag:
            await kill_tagged(tag, grace)

    def kill_now(self) -> None:
        """Synchronous last resort at interpreter exit."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._tag:
            kill_tagged_now(self._tag)


class AppManager:
    """Owns every :class:`ManagedApp` of one Jupyter server."""

    def __init__(
        self,
        specs: dict[str, AppSpec],
        base_url: str,
        socket_dir: str,
        default_timeout: float = 120.0,
        stop_grace_period: float = 10.0,
        log_tail_bytes: int = 65536,
        check_owner: bool = True,
        bwrap_path: str = "bwrap",
        cwd: str | None = None,
        clock: Callable[[], float] = time.time,
        setup: list[str] | None = None,
    ):
        self.base_url = base_url
        self.socket_dir = socket_dir
        self.default_timeout = default_timeout
        self.stop_grace_period = stop_grace_period
        self.log_tail_bytes = log_tail_bytes
        self.check_owner = check_owner
        self.bwrap_path = bwrap_path
        self.cwd = cwd
        self.clock = clock
        self.setup = list(setup or [])
        self.apps: dict[str, ManagedApp] = {}
        for name, spec in specs.items():
            self.apps[name] = ManagedApp(spec, self)
            for i in range(2, spec.instances + 1):
                copy = dataclasses.replace(spec, name=f"{name}-{i}", family=spec.family or name)
                self.apps.setdefault(copy.name, ManagedApp(copy, self))
        self._idle_task: asyncio.Task[None] | None = None
        #: the lab's metrics (hpcgate.lab.metrics.LabMetrics), set by the extension
        self.metrics: Any = None

    def get(self, name: str) -> ManagedApp | None:
        return self.apps.get(name)

    def instances(self, family: str) -> list[ManagedApp]:
        """Every instance of the spec named ``family``, first one first."""
        return [a for a in self.apps.values() if (a.spec.family or a.spec.name) == family]

    async def start_new(self, family: str, params: dict[str, Any] | None = None) -> ManagedApp:
        """Start the first stopped instance of ``family`` (raises AppStartError if none is free)."""
        free = [a for a in self.instances(family) if a.state in (AppState.STOPPED, AppState.FAILED) and not a.lock.locked()]
        if not free:
            count = len(self.instances(family))
            raise AppStartError(f"all {count} instance(s) of {family} are running; stop one before starting another")
        app = free[0]
        await app.check_request(params)  # a refused request reserves nothing
        if app.state not in (AppState.STOPPED, AppState.FAILED) or app.lock.locked():
            return await self.start_new(family, params)
        app.state = AppState.STARTING  # reserved before the first await: a concurrent call takes the next one
        try:
            await app.start(params)
        except AppStartError:
            if app.state == AppState.STARTING:
                app.state = AppState.FAILED
            raise
        return app

    async def check_all_available(self) -> None:
        """Fill every app's ``missing`` list (once per family)."""
        families = {a.spec.family or a.spec.name: a for a in self.apps.values()}
        for head in families.values():
            missing = await head.check_available()
            for app in self.instances(head.spec.family or head.spec.name):
                app.missing = missing

    def start_idle_checker(self) -> None:
        timeouts = [a.spec.idle_timeout for a in self.apps.values() if a.spec.idle_timeout > 0]
        if timeouts and self._idle_task is None:
            interval = max(0.5, min(30.0, min(timeouts) / 4))
            self._idle_task = asyncio.ensure_future(self._idle_loop(interval))

    async def _idle_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            for app in list(self.apps.values()):
                idle = app.spec.idle_timeout
                if idle > 0 and app.state == AppState.RUNNING and now - (app.last_activity or now) > idle:
                    log.info("stopping app %s: idle for more than %g s", app.spec.name, idle)
                    await app.stop("idle")

    async def stop_all(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        await asyncio.gather(*(a.stop("server shutting down") for a in self.apps.values() if a.proc), return_exceptions=True)

    def kill_all_now(self) -> None:
        for app in self.apps.values():
            app.kill_now()
