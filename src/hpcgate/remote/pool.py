"""Running argv on a host: locally, or over a pooled SSH connection.

Pieces, from the bottom up:

- :class:`SSHTarget`: where and as whom to connect (host, port, login, key files, host
  key checks, keepalive). Hashable: the pool keeps one connection per target.
- :class:`SSHPool`: one supervised asyncssh connection per target, opened on first use,
  re-opened after it dropped, with keepalive and a cap on concurrent sessions (OpenSSH
  refuses more than ``MaxSessions``, 10 by default, on one connection).
- :class:`SystemRemote`: runs commands as a user's account on one catalog system's
  hosts. It turns the catalog's :class:`~hpcgate.catalog.Identity` into a target:
  the user's own key (``user_key``) or a service account whose key the hub holds and
  which switches to the user's account with ``switch_user`` (``runuser -u`` or
  ``sudo -u``) before running the command (``service_account``).
- :func:`run_local`: the same call for the hub host itself.

Contracts:

- Commands are argv lists. A remote command line is ``shlex.join(argv)``: no value is
  ever interpolated into a shell string. Scripts (:meth:`SystemRemote.run_script`) are
  constants of hpcgate that receive their values as positional parameters ``"$1"``...
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
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncssh

from ..catalog import System
from .paths import check_account, render_path

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

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect_options(self) -> dict:
        """Keyword arguments for :func:`asyncssh.connect` (keys are read here)."""
        try:
            key = asyncssh.read_private_key(self.key_path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise RemoteError(
                f"cannot use the SSH key {self.key_path} for {self.username}@{self.host}: {_why(exc)}"
            ) from exc
        client_key: object = key
        if self.cert_path:
            try:
                client_key = (key, asyncssh.read_certificate(self.cert_path))
            except (OSError, asyncssh.KeyImportError) as exc:
                raise RemoteError(
                    f"cannot use the SSH certificate {self.cert_path} for "
                    f"{self.username}@{self.host}: {_why(exc)}"
                ) from exc
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


def _why(exc: BaseException) -> str:
    """A short lower-case cause for an error sentence."""
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
            f"{target.where} refused the login of {target.username}: {_why(exc)}"
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        if isinstance(exc, TimeoutError):
            raise RemoteError(
                f"cannot reach {target.where}: no answer within {target.connect_timeout:.0f} s"
            ) from exc
        raise RemoteError(f"cannot reach {target.where}: {_why(exc)}") from exc


class _PooledConnection:
    """The connection of one target, its session cap and the lock that guards it."""

    def __init__(self, target: SSHTarget, max_sessions: int):
        self.target = target
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sessions = asyncio.Semaphore(max_sessions)
        # Opening and replacing the connection must happen once: without the lock, two
        # commands arriving together on a dropped connection would both reconnect and
        # one connection would leak.
        self.lock = asyncio.Lock()

    def alive(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def get(self) -> asyncssh.SSHClientConnection:
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
    """

    def __init__(self, max_sessions: int = 8):
        self.max_sessions = max_sessions
        self._entries: dict[SSHTarget, _PooledConnection] = {}

    def _entry(self, target: SSHTarget) -> _PooledConnection:
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = _PooledConnection(target, self.max_sessions)
        return entry

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
                        f"lost the connection to {target.where} while running {what}: {_why(exc)}"
                    ) from exc
                continue
            except asyncssh.ChannelOpenError as exc:
                if attempt == 2 or not conn.is_closed():
                    raise RemoteError(f"cannot run {what} on {target.where}: {_why(exc)}") from exc
                continue
            code = result.exit_status
            if code is None or code < 0:
                # killed by a signal, or the channel closed without an exit status
                code = 255
            return CommandResult(code, str(result.stdout or ""), str(result.stderr or ""))
        raise AssertionError("unreachable")

    async def close(self) -> None:
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
        raise RemoteError(f"cannot run {argv[0]} on the hub host: {_why(exc)}") from exc
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


@dataclass
class SystemRemote:
    """Runs commands as users' accounts on the hosts of one catalog system.

    Built by HPCGate per system (cheap; connections live in the shared :class:`SSHPool`).
    """

    system_name: str
    system: System
    pool: SSHPool
    #: values a path template of the catalog may use besides ``{account}``
    template_values: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.system.ssh is None:
            raise ValueError(f"systems.{self.system_name}: kind '{self.system.kind}' needs an ssh section")
        self.ssh = self.system.ssh

    def _path(self, template: str, account: str, key: str) -> str:
        try:
            return render_path(template, account=account, **self.template_values)
        except ValueError as exc:
            raise RemoteError(f"systems.{self.system_name}.ssh.{key}: {exc}") from exc

    def target(self, host: str, account: str) -> SSHTarget:
        """The login that runs commands as ``account`` on ``host``."""
        check_account(account)
        identity = self.ssh.identity
        if identity.mode == "service_account":
            return self._target(
                host,
                identity.service_account or "",
                self._path(identity.service_key or "", account, "identity.service_key"),
                None,
            )
        key = self._path(identity.key_path or "", account, "identity.key_path")
        cert = self._path(identity.cert_path, account, "identity.cert_path") if identity.cert_path else None
        return self._target(host, account, key, cert)

    def _target(self, host: str, username: str, key: str, cert: str | None) -> SSHTarget:
        return SSHTarget(
            host=host,
            port=self.ssh.port,
            username=username,
            key_path=key,
            cert_path=cert,
            known_hosts=self.ssh.known_hosts,
            keepalive_interval=self.ssh.keepalive_interval,
            connect_timeout=self.ssh.connect_timeout,
        )

    def tunnel_target(self, host: str) -> SSHTarget:
        """The login of the tunnel connection (``ssh.tunnel_account``/``tunnel_key``).

        Falls back to the service account of a ``service_account`` identity.
        """
        identity = self.ssh.identity
        account = self.ssh.tunnel_account or (
            identity.service_account if identity.mode == "service_account" else None
        )
        key = self.ssh.tunnel_key or (identity.service_key if identity.mode == "service_account" else None)
        if not account or not key:
            raise RemoteError(
                f"systems.{self.system_name}.ssh.tunnel_account and tunnel_key are needed to carry "
                "tunnels to this system's servers; set both in the catalog."
            )
        return self._target(host, account, self._path(key, account, "tunnel_key"), None)

    def command_line(self, account: str, argv: Sequence[str]) -> str:
        """The remote command line running ``argv`` as ``account`` (quoted, no shell values)."""
        identity = self.ssh.identity
        words = list(argv)
        if identity.mode == "service_account" and account != identity.service_account:
            words = [w.replace("{account}", account) for w in identity.switch_user] + words
        return shlex.join(words)

    async def run(
        self,
        host: str,
        account: str,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` as ``account`` on ``host``; secrets only in ``input``."""
        target = self.target(host, account)
        result = await self.pool.run(
            target,
            self.command_line(account, argv),
            input=input,
            timeout=timeout or self.ssh.command_timeout,
            what=argv[0],
        )
        if check and not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise CommandFailed(
                f"{argv[0]} on {host} as {account} failed (exit {result.returncode})"
                + (f": {detail[-1]}" if detail else ""),
                result,
            )
        return result

    async def run_script(
        self,
        host: str,
        account: str,
        script: str,
        args: Sequence[str],
        *,
        name: str = "script",
        input: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run one of hpcgate's constant sh scripts with ``args`` as ``"$1"``, ``"$2"``...

        ``name`` becomes ``$0`` and appears in errors.
        """
        return await self.run(
            host,
            account,
            ["sh", "-c", script, f"hpcgate-{name}", *args],
            input=input,
            timeout=timeout,
            check=check,
        )
