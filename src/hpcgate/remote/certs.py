"""The hub's SSH certificate authority: one CA key, short-lived user certificates.

The CA lives in one directory (``hpcgate ca init``; by default ``<state dir>/ssh-ca``),
0700, holding:

- ``ca_key`` (0600): the CA's private key (ed25519, OpenSSH format). Read by the hub
  each time it signs, so a new key (after ``hpcgate ca init --force``) is used at once.
- ``ca_key.pub`` (0644): the public line sshd's ``TrustedUserCAKeys`` lists.
- ``revoked.krl`` (0644): an OpenSSH key revocation list (``ssh-keygen -k``) for sshd's
  ``RevokedKeys``, made from ``revoked.txt`` (the KRL's specification, one ``id:`` or
  ``key:`` line each). Written empty by ``init``: sshd refuses every key when its
  ``RevokedKeys`` file cannot be read.

Each SSH connection the hub makes in mode ``certificate`` gets a fresh ed25519 key pair
that only exists in memory and a certificate (:func:`issue`) for exactly one principal
(the account it logs in as), valid from a minute ago (clock skew) until ``validity``
seconds from now, with a key id naming the hub user(s) and the system
(:func:`key_id`: sshd logs it with every login), ``source-address`` when the catalog
gives the hub's addresses, and only port forwarding among the permissions (no pty, X11,
agent forwarding or ``~/.ssh/rc``). Nothing of it is ever written to disk.

Errors: :class:`CAError` (a :class:`ValueError`) with a sentence that names the file
and what to do.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

KEY_FILE = "ca_key"
KRL_FILE = "revoked.krl"
KRL_SPEC = "revoked.txt"
#: Seconds a certificate is valid before it is issued (clocks of hosts differ a little).
CLOCK_SKEW = 60
#: A key id holds only these characters (it is written to sshd's log and a KRL spec).
_KEY_ID_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+/:-")


class CAError(ValueError):
    """The CA cannot be created, read or used; the message says which file and why."""


def default_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Where the hub's CA lives under a state directory."""
    return Path(state_dir) / "ssh-ca"


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the first byte on (then replace atomically)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def init_ca(directory: str | os.PathLike[str], *, force: bool = False, comment: str = "hpcgate user CA") -> str:
    """Create the CA in ``directory`` (0700; key 0600); return its public line.

    Refuses to replace an existing key unless ``force`` (a new key makes every host's
    ``TrustedUserCAKeys`` line stale). Also writes an empty revocation list.
    """
    directory = Path(directory)
    key_path = directory / KEY_FILE
    if key_path.exists() and not force:
        raise CAError(
            f"{key_path} exists already; it is the CA the hosts trust. Use it (`hpcgate ca show`) "
            "or replace it with --force (then update TrustedUserCAKeys on every host)."
        )
    try:
        _private_dir(directory)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        _write(key_path, key.export_private_key(), 0o600)
        _write(directory / (KEY_FILE + ".pub"), key.export_public_key(), 0o644)
        (directory / KRL_SPEC).unlink(missing_ok=True)
        _write_krl(directory, "")
    except OSError as exc:
        raise CAError(f"cannot create the SSH CA in {directory}: {exc.strerror or exc}") from exc
    return public_line(directory)


def public_line(directory: str | os.PathLike[str]) -> str:
    """The CA's public key line (what ``TrustedUserCAKeys`` lists)."""
    path = Path(directory) / (KEY_FILE + ".pub")
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CAError(f"cannot read the CA's public key {path}: {exc.strerror or exc}; run `hpcgate ca init`.") from exc


def load_ca(key_path: str | os.PathLike[str]) -> asyncssh.SSHKey:
    """Read the CA's private key; refuses a file others may read."""
    key_path = Path(key_path)
    try:
        mode = key_path.stat().st_mode
        if mode & 0o077:
            raise CAError(f"the CA key {key_path} may be read by others (mode {mode & 0o777:o}); chmod 600 it.")
        return asyncssh.read_private_key(str(key_path))
    except (OSError, asyncssh.KeyImportError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CAError(f"cannot read the CA key {key_path}: {why}; run `hpcgate ca init`.") from exc


def key_id(system: str, hub_users: Sequence[str], account: str) -> str:
    """The certificate's key id: ``hpcgate/<hub user>[+<hub user>...]@<system>``.

    Without a known hub user (a status query after a restart, before the user's server
    was loaded) it names the account: ``hpcgate/account:<account>@<system>``.
    """
    who = "+".join(sorted(set(hub_users))) or f"account:{account}"
    text = f"hpcgate/{who}@{system}"
    return "".join(c if c in _KEY_ID_SAFE else "_" for c in text)


def issue(
    ca: asyncssh.SSHKey,
    principal: str,
    key_id: str,
    validity: float,
    source_addresses: Sequence[str] = (),
    *,
    now: float | None = None,
) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """A fresh in-memory key pair and its certificate for exactly ``principal``.

    Valid from ``CLOCK_SKEW`` seconds before ``now`` until ``now + validity``.
    """
    now = time.time() if now is None else now
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(
        user_key,
        key_id,
        serial=secrets.randbits(63),
        principals=[principal],
        valid_after=int(now - CLOCK_SKEW),
        valid_before=int(now + validity),
        source_address=list(source_addresses) or None,
        permit_x11_forwarding=False,
        permit_agent_forwarding=False,
        permit_port_forwarding=True,
        permit_pty=False,
        permit_user_rc=False,
    )
    return user_key, cert


@dataclass(frozen=True)
class CertificateLogin:
    """How one SSH target logs in: a fresh key and certificate at every connection.

    Part of a pooled target's identity (hashable); ``hub_users`` is asked at each
    connection for the key id and does not take part in comparisons.
    """

    ca_key: str
    system: str
    #: seconds a certificate is valid after it was issued
    validity: float
    source_addresses: tuple[str, ...] = ()
    #: fixed key id (tunnel connections); else made from ``hub_users``
    fixed_key_id: str | None = None
    hub_users: Callable[[], Sequence[str]] | None = field(default=None, compare=False)

    def key_id_for(self, account: str) -> str:
        if self.fixed_key_id:
            return self.fixed_key_id
        return key_id(self.system, list(self.hub_users()) if self.hub_users else [], account)

    def credentials(self, account: str) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """A new key pair and certificate for logging in as ``account`` (CAError if the CA fails)."""
        return issue(load_ca(self.ca_key), account, self.key_id_for(account), self.validity, self.source_addresses)


# --- revocation ---------------------------------------------------------------------


def _write_krl(directory: Path, spec: str) -> Path:
    """(Re)build ``revoked.krl`` from ``spec`` with ``ssh-keygen -k``."""
    krl = directory / KRL_FILE
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        spec_file = Path(tmp) / "spec"
        spec_file.write_text(spec)
        out = Path(tmp) / "krl"
        argv = ["ssh-keygen", "-q", "-k", "-f", str(out)]
        if spec.strip():
            argv += ["-s", str(directory / (KEY_FILE + ".pub")), str(spec_file)]
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
        except FileNotFoundError as exc:
            raise CAError("ssh-keygen is not installed (package openssh-client); it writes the revocation list.") from exc
        except subprocess.CalledProcessError as exc:
            raise CAError(f"ssh-keygen could not write the revocation list: {exc.stderr.strip()}") from exc
        os.chmod(out, 0o644)
        os.replace(out, krl)
    return krl


def revoke(
    directory: str | os.PathLike[str], *, key_ids: Sequence[str] = (), keys: Sequence[str] = (), whole_ca: bool = False
) -> Path:
    """Add certificates (by key id), public keys or the CA key itself to the KRL.

    Returns the KRL's path: copy it to every host's ``RevokedKeys`` file. Revoking the CA
    key refuses every certificate it ever signed (after ``hpcgate ca init --force``).
    """
    directory = Path(directory)
    spec_path = directory / KRL_SPEC
    try:
        lines = spec_path.read_text().splitlines() if spec_path.exists() else []
    except OSError as exc:
        raise CAError(f"cannot read {spec_path}: {exc.strerror or exc}") from exc
    new = [f"id: {k}" for k in key_ids]
    for k in keys:
        if "\n" in k.strip() or not k.strip():
            raise CAError("a public key to revoke is one line 'ssh-ed25519 AAAA...'.")
        new.append(f"key: {k.strip()}")
    if whole_ca:
        new.append(f"key: {public_line(directory)}")
    for line in new:
        if any(c in line for c in "\r\n") or line in lines:
            continue
        lines.append(line)
    text = "".join(f"{line}\n" for line in lines)
    krl = _write_krl(directory, text)
    _write(spec_path, text.encode(), 0o600)
    return krl
