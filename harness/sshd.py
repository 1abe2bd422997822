"""A real OpenSSH sshd on 127.0.0.1 for the remote, backend and tunnel tests and the
tunnel benchmark (no namespaces needed).

:class:`LoopbackSSHD` writes a config, a host key and user keys into a private
directory, creates (once) the Unix accounts it logs in as, and starts
``/usr/sbin/sshd -D`` on a free port. ``StrictModes no`` because the keys live in a
pytest temporary directory; it trusts an SSH CA made by hpcgate's own code (``ca/``,
``hpcgate ca init``) with a principals file per account and the CA's revocation list; everything else is what a login node would run: key-only
auth, TCP forwarding, ``GatewayPorts clientspecified``.

It also provides :data:`FAKE_LAB`, a stand-in for hpcgate-singleuser where a real
JupyterLab adds nothing (backend and tunnel tests): it binds like hpcgate-singleuser,
writes the connection file, starts a child in a session of its own (as Jupyter starts
kernels) and answers HTTP with what it sees.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh

from hpcgate.net import free_port
from hpcgate.remote import certs

SSHD = "/usr/sbin/sshd"
USERS = ("hpcgt-ann", "hpcgt-ben")
TUNNEL_USER = "hpcgt-tun"

FAKE_LAB = r'''
import http.server, json, os, socket, subprocess, sys
ip = os.environ.get("HPCGATE_BIND_IP") or "127.0.0.1"
s = socket.socket(); s.bind((ip, 0)); port = s.getsockname()[1]; s.close()
conn = os.environ.get("HPCGATE_CONNECTION_FILE")
if conn:
    fd = os.open(conn + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps({"host": os.environ.get("HPCGATE_REPORT_HOST") or ip, "port": port}).encode())
    os.close(fd); os.replace(conn + ".tmp", conn)
kernel = subprocess.Popen(["sleep", "600"], start_new_session=True)
BLOB = b"x" * (1 << 20)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/blob/"):
            n = int(self.path.split("/")[2]); self.send_response(200)
            self.send_header("Content-Length", str(n << 20)); self.end_headers()
            for _ in range(n): self.wfile.write(BLOB)
            return
        body = json.dumps({"user": os.environ.get("USER"), "uid": os.getuid(), "pid": os.getpid(),
            "kernel": kernel.pid, "token": bool(os.environ.get("JUPYTERHUB_API_TOKEN")),
            "api": os.environ.get("JUPYTERHUB_API_URL"), "argv": sys.argv[1:],
            "cwd": os.getcwd()}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
print(f"fake lab on {ip}:{port}", flush=True)
http.server.ThreadingHTTPServer((ip, port), H).serve_forever()
'''


def ensure_user(name: str) -> pwd.struct_passwd:
    """Create a Unix account (once) that sshd accepts (password field ``*``)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        subprocess.run(["usermod", "-p", "*", name], check=True)
        return pwd.getpwnam(name)


class LoopbackSSHD:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # the fake lab script is read by test users
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.keys: dict[str, Path] = {}
        self.log = self.dir / "sshd.log"

    def setup(self) -> LoopbackSSHD:
        auth = self.dir / "authorized"
        auth.mkdir(exist_ok=True)
        os.chmod(auth, 0o755)
        for user in (*USERS, TUNNEL_USER, "root"):
            if user != "root":
                ensure_user(user)
            keydir = self.dir / "keys" / user
            keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(keydir / "id_ed25519"))
            os.chmod(keydir / "id_ed25519", 0o600)  # OpenSSH's client refuses others
            (auth / user).write_bytes(key.export_public_key())
            os.chmod(auth / user, 0o644)
            self.keys[user] = keydir / "id_ed25519"
        self.ca_dir = self.dir / "ca"
        certs.init_ca(self.ca_dir)
        principals = self.dir / "principals"
        principals.mkdir(exist_ok=True)
        os.chmod(principals, 0o755)
        for user in (*USERS, TUNNEL_USER):
            (principals / user).write_text(f"{user}\n")
            os.chmod(principals / user, 0o644)
        host_key = self.dir / "host_key"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
        os.chmod(host_key, 0o600)
        public = asyncssh.read_private_key(str(host_key)).export_public_key().decode().split()
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}/%u",
                    f"TrustedUserCAKeys {self.ca_dir / 'ca_key.pub'}",
                    f"AuthorizedPrincipalsFile {principals}/%u",
                    f"RevokedKeys {self.ca_dir / certs.KRL_FILE}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    f"AllowUsers {' '.join((*USERS, TUNNEL_USER, 'root'))}",
                    "AllowTcpForwarding yes",
                    "GatewayPorts clientspecified",
                    "MaxSessions 50",
                    "MaxStartups 100:30:200",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True)
        self.fake_lab = self.dir / "fake_lab.py"
        self.fake_lab.write_text(FAKE_LAB)
        os.chmod(self.fake_lab, 0o644)
        return self

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"sshd did not listen on 127.0.0.1:{self.port}; see {self.log}")

    def session_pids(self) -> list[int]:
        """Every sshd process below the listener (the per-connection sessions)."""
        if self.proc is None:
            return []
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                try:
                    exe = os.readlink(f"/proc/{child}/exe")
                except OSError:
                    continue
                if exe == SSHD:
                    found.append(child)
                    todo.append(child)
        return found

    def kill(self) -> None:
        """What a crashed jump host looks like: the listener and every session die."""
        if self.proc is None:
            return
        sessions = self.session_pids()
        self.proc.kill()
        self.proc.wait()
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / certs.KEY_FILE

    def certificate_identity(self, **extra) -> dict:
        """The catalog's ``identity`` for certificates from this sshd's CA."""
        return {"mode": "certificate", "ca_key": str(self.ca_key), "certificate_minutes": 2, **extra}

    def system_data(self, **overrides) -> dict:
        """Catalog data of a kind-ssh system on this sshd (per-user keys, tunnel user)."""
        data = {
            "kind": "ssh",
            "hosts": ["127.0.0.1"],
            "ssh": {
                "port": self.port,
                "known_hosts": str(self.known_hosts),
                "identity": {"mode": "user_key", "key_path": str(self.dir / "keys" / "{account}" / "id_ed25519")},
                "tunnel_account": TUNNEL_USER,
                "tunnel_key": str(self.keys[TUNNEL_USER]),
                "keepalive_interval": 2,
                "connect_timeout": 3,
            },
            "singleuser_command": ["/usr/bin/python3", str(self.fake_lab)],
            "partitions": {"interactive": {}},
        }
        for key, value in overrides.items():
            if key == "ssh":
                data["ssh"] = {**data["ssh"], **value}
            else:
                data[key] = value
        return data


@contextmanager
def running_sshd(prefix: str = "hpcgate-sshd-") -> Iterator[LoopbackSSHD]:
    """A started :class:`LoopbackSSHD` in a new directory under /tmp (not pytest's 0700
    ones: the test accounts read the authorized keys and the fake lab script); killed
    and its directory removed at the end."""
    directory = tempfile.mkdtemp(prefix=prefix)
    server = LoopbackSSHD(Path(directory)).setup()
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
