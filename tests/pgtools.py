"""A real PostgreSQL server for tests (Debian's postgresql-15), in a temporary data directory.

``initdb`` and ``postgres`` refuse to run as root: as root the server runs as the
``postgres`` user the Debian package created (``runuser``), otherwise as the current
user. It listens on a free loopback port with password authentication (scram-sha-256)
and on a Unix socket in its own directory; it is stopped by its PID (SIGINT, a fast
shutdown) and its directory removed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.hub import wait_for
from harness.missing import not_installed
from hpcgate.net import free_port

PG_BIN = Path(os.environ.get("HPCGATE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def pg_missing_reason() -> str | None:
    """Why PostgreSQL cannot run here (None if it can)."""
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL is not installed ({PG_BIN}/postgres missing; scripts/install-system-deps.sh installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


class PostgresServer:
    """One PostgreSQL cluster: ``start()``, ``create_database()``, ``stop()``."""

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hpcgate-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "socket"
        self.log_path = self.dir / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if os.geteuid() == 0 else argv

    def start(self, timeout: float = 60) -> PostgresServer:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for path in (self.dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        # the superuser authenticates over the socket by its Unix user (peer); TCP needs a password
        subprocess.run(
            self._as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=peer",
                            "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
            check=True, capture_output=True, text=True,
        )
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self._as_owner([str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                            "-h", "127.0.0.1", "-k", str(self.socket_dir), "-c", "fsync=off"]),
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: self._alive() and self.psql("SELECT 1", check=False).returncode == 0, timeout,
                 "PostgreSQL to accept connections")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"postgres exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        """Run ``sql`` as the superuser over the Unix socket (the SQL goes on stdin, not argv)."""
        argv = [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", "postgres", "-d", database, "-At"]
        return subprocess.run(self._as_owner(argv), input=sql, capture_output=True, text=True, check=check)

    def create_database(self, name: str) -> str:
        """A new database owned by a new role with a random password; returns its URL (a secret)."""
        password = secrets.token_urlsafe(18)
        self.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}';\nCREATE DATABASE {name} OWNER {name};")
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self, timeout: float = 30) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        if self.proc:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.pid:
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + timeout
        while self.pid and Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole session (started on first use)."""
    reason = pg_missing_reason()
    if reason:
        # the package from install-system-deps.sh creates the postgres user too
        not_installed(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


_databases = iter(range(1, 1_000_000))


def new_database(server: PostgresServer) -> str:
    """A fresh database on ``server`` (unique per call); its URL."""
    return server.create_database(f"hub{next(_databases)}_{os.getpid()}")
