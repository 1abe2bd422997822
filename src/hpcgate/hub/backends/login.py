"""The login-host part that the ``ssh`` and ``slurm`` backends share (they compose it).

:class:`LoginHosts` owns, for one catalog system:

- the commands run as users' accounts on its login hosts (:attr:`LoginHosts.remote`, a
  :class:`~hpcgate.remote.SystemRemote` on the hub's shared SSH pool);
- the choice of login host: the partition's ``ssh.partition_hosts`` or else the
  system's ``hosts``, round robin; a host that could not be reached goes last for
  :data:`HOST_RETRY_AFTER` seconds (:meth:`LoginHosts.submit` tries the next one);
- the files every server keeps under ``~/.hpcgate`` (0700): its log in ``logs/`` and,
  in ``run/``, its environment file and its connection file
  (:meth:`LoginHosts.log_tail`, :meth:`LoginHosts.read_connection_file`).

Also the pieces of the remote scripts both backends send: :data:`PRIVATE_DIRS`,
:func:`env_lines`, :func:`remote_workdir`, :func:`safe_name`.

Errors: what it raises is :class:`~hpcgate.hub.backends.base.SubmitError`; a host that
cannot be used is skipped, and a log or connection file that cannot be read is
reported in the text (log) or as "not there yet" (connection file).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable

from ...catalog import HOST_PATTERN, NAME_PATTERN, System
from ...remote import AccountName, CommandFailed, RemoteError, SSHPool, SystemRemote
from .base import BackendContext, JobHandle, SubmitError

log = logging.getLogger("hpcgate.backends.login")

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Hub-side variables of JupyterHub's ``env_keep`` that mean nothing on another host.
HUB_LOCAL_ENV = frozenset(
    {"PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "JUPYTER_PATH"}
)
#: Seconds a login host that could not be reached is tried last.
HOST_RETRY_AFTER = 30.0

# The scripts below are constants; every value reaches them as a positional parameter.
# They are written for POSIX sh and procps/coreutils, as found on Linux login nodes.

#: First lines of every remote script that writes: strict, private files, a 0700
#: ~/.hpcgate with logs/ and run/ (environment files), ``$base`` pointing at it.
PRIVATE_DIRS = r"""
set -e
umask 077
cd "$HOME"
base="$HOME/.hpcgate"
mkdir -p "$base/logs" "$base/run"
chmod 700 "$base" "$base/logs" "$base/run"
"""

#: $1 log name, $2 bytes
TAIL_SCRIPT = r"""tail -c "$2" "$HOME/.hpcgate/logs/$1.log" 2>/dev/null || true"""

#: $1 run id; exit 3 when the file is not there (yet)
CONNECTION_SCRIPT = r"""
f="$HOME/.hpcgate/run/$1.json"
[ -f "$f" ] || exit 3
cat "$f"
rm -f "$f"
"""


def safe_name(server_name: str) -> str:
    """The server's name for file names: itself if it is a plain name, else a random one."""
    if not server_name:
        return "default"
    if re.fullmatch(NAME_PATTERN, server_name):
        return server_name
    return "server-" + secrets.token_hex(4)


def remote_workdir(template: str, account: AccountName) -> str:
    """The catalog's ``workdir`` for the remote shell, relative to the account's home.

    Only ``{account}`` may be used (an :class:`AccountName`, so it adds no path
    components); ``~`` is the account's home on the remote host, not the hub's.
    """
    try:
        rendered = template.format_map({"account": AccountName(account)})
    except (KeyError, IndexError, ValueError) as exc:
        raise SubmitError(f"The workdir template {template!r} of this system may only use {{account}}.") from exc
    if rendered in ("~", ""):
        return "."
    if rendered.startswith("~/"):
        return rendered[2:] or "."
    return rendered


#: Last line of every environment file: a login environment without any locale (an
#: sshd without PAM passes none) gets a UTF-8 one, so that terminals and ``!`` commands
#: in notebooks speak UTF-8; a locale the account has is kept.
DEFAULT_LOCALE = '[ -n "${LANG-}${LC_ALL-}${LC_CTYPE-}" ] || export LANG=C.UTF-8'


def env_lines(env: dict[str, str]) -> str:
    """The server's environment file (sent on stdin), sourced after the login profile:
    ``export NAME='value'`` lines, then :data:`DEFAULT_LOCALE`."""
    lines = []
    for name, value in env.items():
        if name in HUB_LOCAL_ENV:
            continue
        if not ENV_NAME.fullmatch(name):
            raise SubmitError(f"Cannot pass the environment variable {name[:40]!r}: not a valid name.")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(DEFAULT_LOCALE)
    return "\n".join(lines) + "\n"


class LoginHosts:
    """The login hosts of one system, and commands there as users' accounts.

    ``pool``: the hub's shared SSH pool (HPCGate passes it); without one, a pool of
    its own that :meth:`close` closes.
    """

    def __init__(self, name: str, system: System, context: BackendContext, pool: SSHPool | None = None):
        self.name = name
        self.system = system
        self.pool = pool or SSHPool()
        self._own_pool = pool is None
        self.remote = SystemRemote(
            name, system, self.pool, {"state_dir": context.state_dir}, hub_users_of=context.hub_users_of
        )
        self._next_host = 0
        self._unreachable: dict[str, float] = {}

    # --- which host -------------------------------------------------------------------

    def _recent_failures(self) -> set[str]:
        now = time.monotonic()
        return {h for h, t in self._unreachable.items() if now - t < HOST_RETRY_AFTER}

    def candidates(self, partition: str) -> list[str]:
        """Hosts to start a server of ``partition`` on, round robin; recent failures last."""
        assert self.system.ssh is not None
        hosts = list(self.system.ssh.partition_hosts.get(partition) or self.system.hosts)
        start = self._next_host % len(hosts)
        self._next_host += 1
        ordered = hosts[start:] + hosts[:start]
        recent = self._recent_failures()
        return [h for h in ordered if h not in recent] + [h for h in ordered if h in recent]

    def in_order(self) -> list[str]:
        """The system's hosts in catalog order (for queries); recent failures last."""
        recent = self._recent_failures()
        hosts = list(self.system.hosts)
        return [h for h in hosts if h not in recent] + [h for h in hosts if h in recent]

    def failed(self, host: str) -> None:
        """``host`` could not be reached: try it last for a while."""
        self._unreachable[host] = time.monotonic()

    def worked(self, host: str) -> None:
        self._unreachable.pop(host, None)

    async def submit(self, partition: str, start: Callable[[str], Awaitable[JobHandle]]) -> JobHandle:
        """``start(host)`` on the first candidate host that can be reached.

        A host that cannot be reached (:class:`RemoteError`) is skipped; a command that
        ran and failed there (:class:`CommandFailed`) fails the start. Raises
        :class:`SubmitError` with every host's reason when none could be used.
        """
        errors = []
        for host in self.candidates(partition):
            try:
                handle = await start(host)
            except CommandFailed as exc:
                raise SubmitError(f"Cannot start the server on {host}: {exc}.") from exc
            except RemoteError as exc:
                self.failed(host)
                log.warning("Skipping login host %s of %s: %s", host, self.name, exc)
                errors.append(str(exc))
                continue
            self.worked(host)
            return handle
        if len(errors) == 1:
            raise SubmitError(f"Cannot start the server: {errors[0]}. Try again later.")
        raise SubmitError(
            f"Cannot start the server: no login host of {self.name} could be used ("
            + "; ".join(errors)
            + "). Try again later."
        )

    # --- the server's files -------------------------------------------------------------

    async def log_tail(self, handle: JobHandle, nbytes: int = 4096) -> str:
        """The last ``nbytes`` of ``~/.hpcgate/logs/<log>.log``, or why it cannot be read."""
        if not handle.host:
            return ""
        try:
            result = await self.remote.run_script(
                handle.host, handle.extra["account"], TAIL_SCRIPT, [handle.extra["log"], str(int(nbytes))], name="tail"
            )
        except RemoteError as exc:
            return f"(cannot read the log on {handle.host}: {exc})"
        return result.stdout

    async def read_connection_file(self, handle: JobHandle) -> tuple[str, int] | None:
        """The address in the server's connection file (removed once read), or None."""
        if not handle.extra.get("connection_file") or not handle.host:
            return None
        try:
            result = await self.remote.run_script(
                handle.host, handle.extra["account"], CONNECTION_SCRIPT, [handle.extra["run_id"]], name="connection"
            )
        except RemoteError as exc:
            log.warning("Cannot read the connection file of %s: %s", handle.job_id, exc)
            return None
        if result.returncode != 0:
            return None
        try:
            data = json.loads(result.stdout)
            host, port = data["host"], data["port"]
        except (ValueError, KeyError, TypeError):
            log.warning("Connection file of %s is not valid JSON with host and port", handle.job_id)
            return None
        if not isinstance(host, str) or not re.fullmatch(HOST_PATTERN, host):
            return None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return None
        return host, port

    async def close(self) -> None:
        """Close the pool if it is this object's own (the hub's shared one it leaves)."""
        if self._own_pool:
            await self.pool.close()
