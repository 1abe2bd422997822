"""Running commands on a host: over a pooled SSH connection, or locally.

Pieces, from the bottom up:

- :class:`SSHTarget`: where and as whom to connect (host, port, login, key files, host
  key checks, keepalive). Hashable: the pool keeps one connection per target.
- :class:`SSHPool`: one supervised asyncssh connection per target, opened on first use,
  re-opened after it dropped, with keepalive, a cap on concurrent sessions (OpenSSH
  refuses more than ``MaxSessions``, 10 by default, on one connection) and idle
  eviction (a connection unused for ``idle_timeout`` seconds is closed).
- :class:`~hpcgate.remote.certs.CertificateLogin` on a target (mode ``certificate``):
  a fresh key and a certificate from the hub's SSH CA at every connection
  (:mod:`hpcgate.remote.certs`).
- :func:`describe_error`: the short cause of a connection error, for a sentence.
- :func:`run_local`: the same call for the hub host itself.

Who logs in as whom on which system (the catalog's identities) is
:mod:`hpcgate.remote.targets`; the tunnels are :mod:`hpcgate.remote.tunnels`.

Contracts:

- Remote command lines are built by :mod:`hpcgate.remote.targets` from argv lists
  (``shlex.join``): no value is ever interpolated into a shell string.
- Secrets travel on stdin (``input=``), never in argv.
- Every failure to reach or use a host raises :class:`RemoteError` with a sentence that
  names the host and what failed, e.g. ``cannot reach login1:22: connection refused``.
  A command that ran and failed is not an error here: check ``CommandResult.returncode``
  (or pass ``check=True`` to get :class:`CommandFailed`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from .certs import CAError, CertificateLogin

log = logging.getLogger("hpcgate.remote")


class RemoteError(OSError):
    """A host could not be reached or used; the message names the host and the cause.

    A subclass of :class:`OSError` so that callers that treat "the system could not be
    asked" as UNKNOWN (the StatusCache) handle it without knowing SSH.
    """


class CommandFailed(RemoteError):
    """A command ran and exited non-zero (only raised with ``check=True``)."""

    def __init__(self, message: str, result: CommandResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class SSHTarget:
    """One SSH login: a pooled connection is shared by every user of the same target."""

    host: str
    port: int
    username: str
    key_path: str
    cert_path: str | None = None
    #: known_hosts file; ``None`` disables host key checks (test set-ups only).
    known_hosts: str | None = None
    keepalive_interval: float = 15.0
    #: keepalives without answer before the connection counts as dead
    keepalive_count_max: int = 3
    connect_timeout: float = 10.0
    #: Mode ``certificate``: a fresh key and certificate at every connection (``key_path``
    #: and ``cert_path`` unused).
    certificate: CertificateLogin | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect_options(self) -> dict:
        """Keyword arguments for :func:`asyncssh.connect` (keys are read or made here)."""
        if self.certificate is not None:
            try:
                client_key: object = self.certificate.credentials(self.username)
            except CAError as exc:
                raise RemoteError(f"cannot sign a certificate for {self.username}@{self.host}: {exc}") from exc
            return self._options(client_key)
        try:
            key = asyncssh.read_private_key(self.key_path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise RemoteError(
                f"cannot use the SSH key {self.key_path} for {self.username}@{self.host}: {describe_error(exc)}"
            ) from exc
        client_key = key
        if self.cert_path:
            try:
                client_key = (key, asyncssh.read_certificate(self.cert_path))
            except (OSError, asyncssh.KeyImportError) as exc:
                raise RemoteError(
                    f"cannot use the SSH certificate {self.cert_path} for "
                    f"{self.username}@{self.host}: {describe_error(exc)}"
                ) from exc
        return self._options(client_key)

    def _options(self, client_key: object) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "client_keys": [client_key],
            "known_hosts": self.known_hosts,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": self.keepalive_count_max,
            "connect_timeout": self.connect_timeout,
            # only what the catalog says: no ~/.ssh/config, no agent, no password prompts
            "config": [],
            "agent_path": None,
            "preferred_auth": "publickey",
        }


def describe_error(exc: BaseException) -> str:
    """A short lower-case cause of a connection error, for a sentence.

    ``cannot reach login1:22: {describe_error(exc)}`` reads e.g. "connection refused",
    "no route to host" or "its host key is not the one in known_hosts".
    """
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no route to host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, asyncssh.PermissionDenied):
        return "permission denied (the key was not accepted)"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "its host key is not the one in known_hosts"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"the server closed the connection ({exc.reason or exc.code})"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return f"the server refused a channel ({exc.reason or exc.code})"
    return str(exc) or type(exc).__name__


async def connect(target: SSHTarget) -> asyncssh.SSHClientConnection:
    """Open one connection to ``target``; :class:`RemoteError` says why it failed."""
    options = target.connect_options()
    try:
        # asyncssh's connect_timeout covers TCP and the whole handshake
        return await asyncssh.connect(**options)
    except asyncssh.PermissionDenied as exc:
        raise RemoteError(
            f"{target.where} refused the login of {target.username}: {describe_error(exc)}"
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        if isinstance(exc, TimeoutError):
            raise RemoteError(
                f"cannot reach {target.where}: no answer within {target.connect_timeout:.0f} s"
            ) from exc
        raise RemoteError(f"cannot reach {target.where}: {describe_error(exc)}") from exc


class _PooledConnection:
    """The connection of one target, its session cap and the lock that guards it."""

    def __init__(self, target: SSHTarget, max_sessions: int):
        self.target = target
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sessions = asyncio.Semaphore(max_sessions)
        #: commands in flight (idle eviction leaves a busy connection alone)
        self.busy = 0
        #: event loop time of the last use
        self.last_used = asyncio.get_running_loop().time()
        # Opening and replacing the connection must happen once: without the lock, two
        # commands arriving together on a dropped connection would both reconnect and
        # one connection would leak.
        self.lock = asyncio.Lock()

    def alive(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def get(self) -> asyncssh.SSHClientConnection:
        self.last_used = asyncio.get_running_loop().time()
        if self.alive():
            return self.conn  # type: ignore[return-value]
        async with self.lock:
            if not self.alive():
                self.conn = await connect(self.target)
                log.info("Connected to %s as %s", self.target.where, self.target.username)
            return self.conn  # type: ignore[return-value]

    async def close(self) -> None:
        async with self.lock:  # see __init__: never close while another task opens
            conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()


class SSHPool:
    """Pooled SSH connections, one per :class:`SSHTarget`; owned by HPCGate.

    ``max_sessions`` caps the commands running at once on one connection; more wait.
    ``idle_timeout`` (seconds, 0 for never): a connection that ran no command for that
    long is closed, so that a hub with many users does not keep one login per user open
    for good; the next command opens it again. :meth:`close` (at hub shutdown) closes
    every connection.
    """

    def __init__(self, max_sessions: int = 8, idle_timeout: float = 300.0):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._entries: dict[SSHTarget, _PooledConnection] = {}
        self._reaper: asyncio.Task | None = None
        #: connections closed for being idle (for tests and logs)
        self.evicted = 0

    def _entry(self, target: SSHTarget) -> _PooledConnection:
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = _PooledConnection(target, self.max_sessions)
        if self.idle_timeout > 0 and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.ensure_future(self._evict_idle())
        return entry

    async def _evict_idle(self) -> None:
        """Close connections idle for ``idle_timeout`` s; ends when the pool is empty."""
        loop = asyncio.get_running_loop()
        while self._entries:
            await asyncio.sleep(max(self.idle_timeout / 4, 0.05))
            now = loop.time()
            for target, entry in list(self._entries.items()):
                if entry.busy or now - entry.last_used < self.idle_timeout:
                    continue
                # dropped from the pool first: a command arriving now gets a new entry
                del self._entries[target]
                if entry.alive():
                    self.evicted += 1
                    log.info("Closing the idle connection to %s as %s", target.where, target.username)
                await entry.close()

    async def connection(self, target: SSHTarget) -> asyncssh.SSHClientConnection:
        """The live connection of ``target``, opened if needed."""
        return await self._entry(target).get()

    async def run(
        self,
        target: SSHTarget,
        command: str,
        *,
        input: str | None = None,
        timeout: float = 30.0,
        what: str = "",
    ) -> CommandResult:
        """Run a remote command line; retries once when a pooled connection went stale."""
        entry = self._entry(target)
        what = what or command.split(" ", 1)[0]
        entry.busy += 1
        try:
            return await self._run(entry, command, input=input, timeout=timeout, what=what)
        finally:
            entry.busy -= 1
            entry.last_used = asyncio.get_running_loop().time()

    async def _run(
        self, entry: _PooledConnection, command: str, *, input: str | None, timeout: float, what: str
    ) -> CommandResult:
        target = entry.target
        for attempt in (1, 2):
            conn = await entry.get()
            try:
                async with entry.sessions:
                    result = await conn.run(
                        command, input=input, check=False, timeout=timeout, errors="replace"
                    )
            except asyncssh.TimeoutError as exc:
                raise RemoteError(
                    f"{what} on {target.host} as {target.username} gave no answer within {timeout:.0f} s"
                ) from exc
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError) as exc:
                if attempt == 1 and not conn.is_closed():
                    conn.close()
                if attempt == 2:
                    raise RemoteError(
                        f"lost the connection to {target.where} while running {what}: {describe_error(exc)}"
                    ) from exc
                continue
            except asyncssh.ChannelOpenError as exc:
                if attempt == 2 or not conn.is_closed():
                    raise RemoteError(f"cannot run {what} on {target.where}: {describe_error(exc)}") from exc
                continue
            code = result.exit_status
            if code is None or code < 0:
                # killed by a signal, or the channel closed without an exit status
                code = 255
            return CommandResult(code, str(result.stdout or ""), str(result.stderr or ""))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close every connection (hub shutdown); the pool stays usable afterwards."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.close()


async def run_local(
    argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0
) -> CommandResult:
    """Run ``argv`` on the hub host; the same result type as a remote command."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise RemoteError(f"cannot run {argv[0]} on the hub host: {describe_error(exc)}") from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout
        )
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise RemoteError(f"{argv[0]} on the hub host gave no answer within {timeout:.0f} s") from exc
    return CommandResult(
        proc.returncode if proc.returncode is not None else 255,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
    )
