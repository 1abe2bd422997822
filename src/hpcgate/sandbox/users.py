"""Real Unix accounts of the sandbox and the SSH keys the hub uses for them.

Accounts (``hpcg-alice``, ``hpcg-bob``: login shells; ``hpcg-tunnel``: ``nologin``,
forwarding only) are created once and kept by ``down``: they are cheap to keep and
recreating them would change UIDs under files in their homes.

Private keys are ``<state_dir>/keys/<account>/id_ed25519``: root-owned, 0600, in 0700
directories (the hub runs as root). Public keys go into the account's
``~/.ssh/authorized_keys`` (0600 in a 0700 ``~/.ssh``, owned by the account, as
``StrictModes yes`` demands). The tunnel account's key line is
``restrict,port-forwarding,permitlisten=...``: no shell, no pty, local forwards
anywhere, remote listens only on the jump host's own addresses (see
:data:`TUNNEL_LISTEN`).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from . import layout as L
from .proc import SandboxError, make_dir, run, write_file

#: Where the tunnel account may open remote (``-R``) listeners: the jump host's
#: addresses (the compute-facing one is what jobs use to reach the hub API) and loopback.
TUNNEL_LISTEN = (L.LOGIN_INNER_ADDR, L.LOGIN_ADDR, "localhost", "127.0.0.1")


def tunnel_key_options() -> str:
    listen = ",".join(f'permitlisten="{host}:*"' for host in TUNNEL_LISTEN)
    return f"restrict,port-forwarding,{listen}"


def ensure_account(name: str, shell: str = "/bin/bash") -> pwd.struct_passwd:
    """Create Unix account ``name`` with a home if missing; unlock it for key logins.

    ``useradd`` leaves the password field ``!`` (locked) and sshd with ``UsePAM no``
    refuses locked accounts, so the field is set to ``*`` (no password, not locked).
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        run(
            ["useradd", "--create-home", "--shell", shell, "--comment", "hpcgate sandbox", name],
            what=f"creating account {name}",
        )
        entry = pwd.getpwnam(name)
    run(["usermod", "-p", "*", "-s", shell, name], what=f"unlocking account {name}")
    home = Path(entry.pw_dir)
    if not home.is_dir():
        make_dir(home, 0o750, owner=name)
    # StrictModes: the home must not be writable by group or others
    os.chmod(home, os.stat(home).st_mode & 0o755)
    return pwd.getpwnam(name)


def ensure_key(lay: L.Layout, account: str) -> Path:
    """The account's private key path; generated (ed25519, no passphrase) if missing."""
    make_dir(lay.keys_dir, 0o700)
    key_dir = make_dir(lay.keys_dir / account, 0o700)
    key = key_dir / "id_ed25519"
    if not (key.exists() and key.with_suffix(".pub").exists()):
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"hpcgate-sandbox {account}",
                "-f",
                str(key),
            ],
            what=f"generating the SSH key of {account}",
        )
    os.chmod(key, 0o600)
    return key


def install_authorized_key(account: str, public_key: str, options: str = "") -> Path:
    """Make ``public_key`` (with ``options``) the only line of the account's authorized_keys."""
    entry = pwd.getpwnam(account)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    make_dir(ssh_dir, 0o700, owner=account)
    path = ssh_dir / "authorized_keys"
    line = f"{options} {public_key.strip()}" if options else public_key.strip()
    write_file(path, line + "\n", 0o600)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def setup_accounts(lay: L.Layout) -> dict[str, Path]:
    """Create every sandbox account with its key; return account -> private key path."""
    keys = {}
    for account in L.ACCOUNTS:
        tunnel = account == L.TUNNEL_ACCOUNT
        ensure_account(account, "/usr/sbin/nologin" if tunnel else "/bin/bash")
        key = ensure_key(lay, account)
        public = key.with_suffix(".pub").read_text()
        install_authorized_key(account, public, tunnel_key_options() if tunnel else "")
        keys[account] = key
    return keys


def account_uids() -> set[int]:
    """UIDs of the sandbox accounts that exist."""
    uids = set()
    for account in L.ACCOUNTS:
        try:
            uids.add(pwd.getpwnam(account).pw_uid)
        except KeyError:
            continue
    return uids


def require_accounts() -> None:
    missing = [a for a in L.ACCOUNTS if a not in {p.pw_name for p in pwd.getpwall()}]
    if missing:
        raise SandboxError(f"sandbox accounts missing: {', '.join(missing)}")
