"""OpenSSH sshd on the login node: config, host key, known_hosts, start and stop.

sshd runs in the login namespace with an absolute ``-f`` config
(``<state_dir>/sshd/sshd_config``), its own ed25519 host key (generated once, kept by
``down`` so ``known_hosts`` stays valid), key-only auth, ``StrictModes yes``,
``AllowTcpForwarding yes`` and ``GatewayPorts clientspecified``, listening on
10.250.1.2:22 (hub side) and 10.250.2.1:22 (compute side). Only the sandbox accounts
may log in, with their keys or with a certificate of the sandbox's SSH CA
(``<state_dir>/ssh-ca``, made once by the code of ``hpcgate ca init``):
``TrustedUserCAKeys``, ``AuthorizedPrincipalsFile`` (each account: its own name) and
the CA's revocation list as ``RevokedKeys``. Its pid file is ``<run_dir>/sshd.pid``; its log ``<state_dir>/log/sshd.log``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..remote import certs
from . import layout as L
from .daemons import daemon_pid, executable_of, stop_daemon
from .network import ns_argv, ns_pids
from .proc import (
    SandboxError,
    kill_pids,
    make_dir,
    run,
    tcp_open,
    wait_until,
    write_file,
)

SSHD = "/usr/sbin/sshd"


def host_key(lay: L.Layout) -> Path:
    return lay.sshd_dir / "ssh_host_ed25519_key"


def config_path(lay: L.Layout) -> Path:
    return lay.sshd_dir / "sshd_config"


def config_text(lay: L.Layout) -> str:
    return "\n".join(
        [
            "# written by hpcgate sandbox",
            f"Port {L.SSH_PORT}",
            f"ListenAddress {L.LOGIN_ADDR}",
            f"ListenAddress {L.LOGIN_INNER_ADDR}",
            f"HostKey {host_key(lay)}",
            f"PidFile {lay.pid_file('sshd')}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            f"TrustedUserCAKeys {lay.ca_dir / (certs.KEY_FILE + '.pub')}",
            f"AuthorizedPrincipalsFile {lay.principals_dir}/%u",
            f"RevokedKeys {lay.ca_dir / certs.KRL_FILE}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            "StrictModes yes",
            f"AllowUsers {' '.join(L.ACCOUNTS)}",
            "AllowTcpForwarding yes",
            "GatewayPorts clientspecified",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            # hubs multiplex many sessions and forwards over one connection
            "MaxSessions 200",
            "MaxStartups 100:30:200",
            "ClientAliveInterval 15",
            "LogLevel VERBOSE",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ]
    )


def setup_sshd(lay: L.Layout) -> bool:
    """Write the config, host key and CA (both once) and the known_hosts file; check the
    config. Returns whether the config changed (a running sshd must re-read it)."""
    make_dir(lay.sshd_dir, 0o700)
    key = host_key(lay)
    if not key.exists():
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpcgate-sandbox login1", "-f", str(key)],
            what="generating the sshd host key",
        )
    if not lay.ca_key.exists():
        certs.init_ca(lay.ca_dir, comment="hpcgate sandbox user CA")
    make_dir(lay.principals_dir, 0o755)
    for account in L.ACCOUNTS:
        write_file(lay.principals_dir / account, f"{account}\n", 0o644)
    try:
        before = config_path(lay).read_text()
    except OSError:
        before = None
    write_file(config_path(lay), config_text(lay), 0o600)
    public = key.with_name(key.name + ".pub").read_text().split()
    names = ",".join([L.LOGIN_ADDR, L.LOGIN_INNER_ADDR, L.LOGIN_HOST])
    write_file(lay.known_hosts, f"{names} {public[0]} {public[1]}\n", 0o644)
    # sshd's privilege separation directory
    make_dir(lay.run_dir.parent / "sshd", 0o755)
    run([SSHD, "-t", "-f", str(config_path(lay))], what="checking the sshd config")
    return before != config_text(lay)


def reload_sshd(lay: L.Layout, timeout: float = 15) -> None:
    """Make the running sshd read its config again (SIGHUP: it re-executes itself, same PID)."""
    pid = sshd_pid(lay)
    if pid is None:
        return
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.2)
    wait_until(
        lambda: tcp_open(L.LOGIN_ADDR, L.SSH_PORT), f"sshd to listen again on {L.LOGIN_ADDR}:{L.SSH_PORT}", timeout
    )


def sshd_pid(lay: L.Layout) -> int | None:
    return daemon_pid(lay, "sshd")


def start_sshd(lay: L.Layout, timeout: float = 15) -> int:
    """Start sshd in the login namespace (if not running); return its PID once it answers."""
    pid = sshd_pid(lay)
    if pid is None:
        make_dir(lay.log_dir, 0o755)
        run(
            ns_argv(
                lay, L.LOGIN_NS, lay.node_argv([SSHD, "-f", str(config_path(lay)), "-E", str(lay.log_dir / "sshd.log")])
            ),
            what="starting sshd in the login namespace",
        )
        pid = wait_until(lambda: sshd_pid(lay), "sshd to write its pid file", timeout)
    wait_until(
        lambda: tcp_open(L.LOGIN_ADDR, L.SSH_PORT), f"sshd to listen on {L.LOGIN_ADDR}:{L.SSH_PORT}", timeout
    )
    return int(pid)


def stop_sshd(lay: L.Layout, sessions: bool = True) -> None:
    """Stop the listening sshd; with ``sessions`` also every sshd session process in login.

    Killing the sessions too is what a crashed or rebooted jump host looks like to the hub:
    its connections drop.
    """
    stop_daemon(lay, "sshd")
    if sessions:
        left = [p for p in ns_pids(L.LOGIN_NS) if executable_of(p) == SSHD]
        if left:
            kill_pids(left, "sshd session processes")
    if tcp_open(L.LOGIN_ADDR, L.SSH_PORT):
        raise SandboxError(f"stop_sshd: something still listens on {L.LOGIN_ADDR}:{L.SSH_PORT}")
