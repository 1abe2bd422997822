"""Who logs in where: account names, the catalog's identities turned into SSH targets.

- :class:`AccountName`: an account name that is safe in a path and on a command line.
  Checked once, when it is made; every function here takes one and does not check
  again. Making an ``AccountName`` of an ``AccountName`` is free.
- :func:`render_path`: an admin's path template (``{account}``, ``{state_dir}``).
- :class:`SystemRemote`: runs commands as a user's account on one catalog system's
  hosts. It turns the catalog's :class:`~hpcgate.catalog.Identity` into a
  :class:`~hpcgate.remote.pool.SSHTarget`: the user's own key (``user_key``) or a
  service account whose key the hub holds and which switches to the user's account with
  ``switch_user`` (``runuser -u`` or ``sudo -u``) before running the command
  (``service_account``), or a certificate from the hub's SSH CA for the user's account,
  made fresh for each connection (``certificate``, :mod:`hpcgate.remote.certs`).
  :meth:`SystemRemote.tunnel_target` is the login of the system's tunnel connection.

Contracts:

- Commands are argv lists. A remote command line is ``shlex.join(argv)``: no value is
  ever interpolated into a shell string. Scripts (:meth:`SystemRemote.run_script`) are
  constants of hpcgate that receive their values as positional parameters ``"$1"``...
- Secrets travel on stdin (``input=``), never in argv.
- A failure to reach or use a host raises :class:`~hpcgate.remote.pool.RemoteError`
  (see :mod:`hpcgate.remote.pool`); an unsafe account name raises :class:`ValueError`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..catalog import System
from .certs import CertificateLogin
from .pool import CommandFailed, CommandResult, RemoteError, SSHPool, SSHTarget

#: Account names that may be put into a path or a command line.
ACCOUNT_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")


class AccountName(str):
    """An account name safe in a path and a command line (checked when made).

    ``AccountName("alice")`` checks; ``AccountName(name)`` of an ``AccountName`` returns
    it unchanged, so a name is checked once however many layers pass it on. An unsafe
    name raises :class:`ValueError` with a sentence for the log.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> AccountName:
        if isinstance(value, AccountName):
            return value
        if not isinstance(value, str) or not ACCOUNT_PATTERN.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"account name {value!r} is not safe to use in a path or command")
        return super().__new__(cls, value)


def render_path(template: str, **values: str) -> str:
    """Fill an admin's path template (``{account}``, ``{state_dir}``; ``~`` expanded).

    Only the named fields are allowed; the account is an :class:`AccountName` (made
    here if it is a plain string), so a user value can never add path components or
    format directives.
    """
    if "account" in values:
        values["account"] = AccountName(values["account"])
    try:
        rendered = template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"path template {template!r} may only use {{{'}, {'.join(sorted(values))}}}: {exc}"
        ) from exc
    return os.path.expanduser(rendered)


@dataclass
class SystemRemote:
    """Runs commands as users' accounts on the hosts of one catalog system.

    Built per system by the backends (cheap; connections live in the shared
    :class:`SSHPool`) and by the tunnels (``pool=None``: only :meth:`tunnel_target`).
    """

    system_name: str
    system: System
    pool: SSHPool | None
    #: values a path template of the catalog may use besides ``{account}``
    template_values: dict[str, str] = field(default_factory=dict)
    #: (system, account) -> the hub users known to use that account: named in the key
    #: id of certificates (mode ``certificate``)
    hub_users_of: Callable[[str, str], Sequence[str]] | None = None

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
        account = AccountName(account)
        identity = self.ssh.identity
        if identity.mode == "service_account":
            return self._target(
                host,
                identity.service_account or "",
                self._path(identity.service_key or "", account, "identity.service_key"),
                None,
            )
        if identity.mode == "certificate":
            owners = self.hub_users_of
            return self._target(
                host,
                account,
                "",
                None,
                self._certificate(
                    hub_users=(lambda: owners(self.system_name, account)) if owners else None
                ),
            )
        key = self._path(identity.key_path or "", account, "identity.key_path")
        cert = self._path(identity.cert_path, account, "identity.cert_path") if identity.cert_path else None
        return self._target(host, account, key, cert)

    def _certificate(self, **extra) -> CertificateLogin:
        identity = self.ssh.identity
        try:
            ca_key = render_path(identity.ca_key, **self.template_values)
        except ValueError as exc:
            raise RemoteError(f"systems.{self.system_name}.ssh.identity.ca_key: {exc}") from exc
        return CertificateLogin(
            ca_key=ca_key,
            system=self.system_name,
            validity=identity.certificate_minutes * 60,
            source_addresses=tuple(identity.source_addresses),
            **extra,
        )

    def _target(
        self, host: str, username: str, key: str, cert: str | None, certificate: CertificateLogin | None = None
    ) -> SSHTarget:
        return SSHTarget(
            host=host,
            port=self.ssh.port,
            username=username,
            key_path=key,
            cert_path=cert,
            known_hosts=self.ssh.known_hosts,
            keepalive_interval=self.ssh.keepalive_interval,
            connect_timeout=self.ssh.connect_timeout,
            certificate=certificate,
        )

    def tunnel_target(self, host: str) -> SSHTarget:
        """The login of the tunnel connection (``ssh.tunnel_account``/``tunnel_key``).

        Falls back to the service account of a ``service_account`` identity. With a
        ``certificate`` identity and no ``tunnel_key``, the tunnel account logs in with a
        certificate too (key id ``hpcgate/tunnel@<system>``).
        """
        identity = self.ssh.identity
        account = self.ssh.tunnel_account or (
            identity.service_account if identity.mode == "service_account" else None
        )
        if account and not self.ssh.tunnel_key and identity.mode == "certificate":
            account = AccountName(account)
            return self._target(
                host, account, "", None, self._certificate(fixed_key_id=f"hpcgate/tunnel@{self.system_name}")
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
        account = AccountName(account)
        target = self.target(host, account)
        assert self.pool is not None, "a SystemRemote without a pool only computes targets"
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
