"""Slurm accounting in the sandbox: MariaDB and slurmdbd on login1, with associations.

Both run in the login namespace (its own loopback: fixed ports cannot clash with the
machine's), stopped by PID like the other daemons:

- ``mariadbd --no-defaults`` as user ``mysql`` with its own datadir
  ``<state_dir>/mariadb/data``, socket ``<run_dir>/mariadb/mysqld.sock`` and port 3306 on
  127.0.0.1. The datadir is initialised once (``mariadb-install-db``, a few seconds) and
  kept across ``down``/``up`` like the job venv; a cold ``up`` only starts it.
- ``slurmdbd`` with its own ``slurmdbd.conf`` (0600, user slurm: it holds the database
  password, which lives in ``<state_dir>/mariadb/secrets/slurmdbd.pass``, 0600, and
  reaches MariaDB only on stdin, never in argv), listening on :data:`DBD_PORT` of login1's
  compute-facing address so that Slurm commands on both nodes find it.

``slurm.conf`` names it (``AccountingStorageType=accounting_storage/slurmdbd``, see
:mod:`.slurm`). The associations (:data:`ASSOCIATIONS`) are made with ``sacctmgr -i``
at every ``up`` (idempotent): hpcg-alice may charge ``ml`` and ``physics`` (default
``ml``), hpcg-bob only ``physics``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from . import layout as L
from .daemons import daemon_pid
from .network import ns_argv
from .proc import SandboxError, make_dir, run, wait_until, write_file

#: slurmdbd's port on login1 (10.250.2.1, reached from login1 and compute1).
DBD_PORT = 6819
#: MariaDB's port on login1's loopback.
DB_PORT = 3306
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
#: account -> description.
ACCOUNTS = {"ml": "Machine learning", "physics": "Physics"}
#: sandbox account -> (accounts it may charge, default account).
ASSOCIATIONS = {
    L.HUB_USERS["alice"]: (("ml", "physics"), "ml"),
    L.HUB_USERS["bob"]: (("physics",), "physics"),
}
CLUSTER = "hpcg-sandbox"


def db_dir(lay: L.Layout) -> Path:
    return lay.state_dir / "mariadb"


def db_socket(lay: L.Layout) -> Path:
    return lay.run_dir / "mariadb" / "mysqld.sock"


def dbd_conf_path(lay: L.Layout) -> Path:
    return lay.ns_etc(L.LOGIN_NS) / "slurm" / "slurmdbd.conf"


def _password(lay: L.Layout) -> str:
    path = db_dir(lay) / "secrets" / "slurmdbd.pass"
    if not path.exists():
        make_dir(path.parent, 0o700)
        write_file(path, secrets.token_urlsafe(24), 0o600)
    return path.read_text().strip()


def slurm_conf_lines(lay: L.Layout) -> list[str]:
    """What ``slurm.conf`` needs to send accounting to the sandbox's slurmdbd.

    ``AccountingStoragePass`` is, with slurmdbd, the munge socket that Slurm commands
    use towards slurmdbd (AuthInfo covers only slurmctld): the sandbox's own munged.
    """
    return [
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={L.LOGIN_INNER_ADDR}",
        f"AccountingStoragePort={DBD_PORT}",
        f"AccountingStoragePass={lay.munge_socket}",
    ]


def slurmdbd_conf_text(lay: L.Layout) -> str:
    return "\n".join(
        [
            "# written by hpcgate sandbox",
            "AuthType=auth/munge",
            f"AuthInfo=socket={lay.munge_socket}",
            f"DbdHost={L.LOGIN_HOST}",
            f"DbdAddr={L.LOGIN_INNER_ADDR}",
            f"DbdPort={DBD_PORT}",
            "SlurmUser=slurm",
            f"PidFile={lay.pid_file('slurmdbd')}",
            f"LogFile={lay.log_dir / 'slurmdbd.log'}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={DB_PORT}",
            f"StorageUser={DB_USER}",
            f"StoragePass={_password(lay)}",
            f"StorageLoc={DB_NAME}",
            "",
        ]
    )


def setup_accounting(lay: L.Layout) -> None:
    """The datadir (initialised once), run and log files, and slurmdbd.conf."""
    base = make_dir(db_dir(lay), 0o755)
    data = base / "data"
    if not (base / "initialised").exists():
        shutil.rmtree(data, ignore_errors=True)
        make_dir(data, 0o700, owner="mysql")
        run(
            [
                "mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}",
                "--auth-root-authentication-method=socket", "--skip-test-db",
            ],
            what="initialising the sandbox's MariaDB datadir (once)",
            timeout=120,
        )  # fmt: skip
        # the slurm user is made when mariadbd first runs (start_mariadbd)
    make_dir(db_socket(lay).parent, 0o755, owner="mysql")
    make_dir(lay.log_dir, 0o755)
    dbd_log = lay.log_dir / "slurmdbd.log"
    dbd_log.touch()
    shutil.chown(dbd_log, "slurm", "slurm")
    pid = lay.pid_file("slurmdbd")
    make_dir(pid.parent, 0o755)
    conf = dbd_conf_path(lay)
    make_dir(conf.parent, 0o755)
    write_file(conf, slurmdbd_conf_text(lay), 0o600)
    shutil.chown(conf, "slurm", "slurm")


def _sql(lay: L.Layout, statements: str, what: str) -> None:
    run(
        ns_argv(lay, L.LOGIN_NS, ["mariadb", "--no-defaults", f"--socket={db_socket(lay)}", "-u", "root"]),
        input=statements,
        what=what,
        timeout=30,
    )


def mariadb_answers(lay: L.Layout) -> bool:
    argv = ns_argv(lay, L.LOGIN_NS, ["mariadb-admin", "--no-defaults", f"--socket={db_socket(lay)}", "-u", "root", "ping"])
    return run(argv, check=False, timeout=10).returncode == 0


def start_mariadbd(lay: L.Layout, timeout: float = 60) -> int:
    """Start MariaDB in the login namespace if it is not running; wait until it answers."""
    pid = daemon_pid(lay, "mariadbd")
    if pid is None:
        data = db_dir(lay) / "data"
        argv = ns_argv(
            lay,
            L.LOGIN_NS,
            [
                "/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
                f"--socket={db_socket(lay)}", f"--port={DB_PORT}", "--bind-address=127.0.0.1",
                f"--pid-file={lay.pid_file('mariadbd')}", f"--log-error={lay.log_dir / 'mariadb.log'}",
                "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                "--skip-log-bin", "--performance-schema=OFF",
            ],
        )  # fmt: skip
        # mariadbd (user mysql) writes its pid file into run_dir, as munged does
        pid_file = lay.pid_file("mariadbd")
        pid_file.write_text("")
        shutil.chown(pid_file, "mysql", "mysql")
        log_file = lay.log_dir / "mariadb.log"
        log_file.touch()
        shutil.chown(log_file, "mysql", "mysql")
        subprocess.Popen(  # constant argv; mariadbd stays in the foreground
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        pid = wait_until(lambda: daemon_pid(lay, "mariadbd"), f"mariadbd to start (see {log_file})", timeout, 0.2)
    wait_until(lambda: mariadb_answers(lay), "MariaDB to answer mariadb-admin ping", timeout, 0.3)
    marker = db_dir(lay) / "initialised"
    if not marker.exists():
        password = _password(lay).replace("'", "")
        _sql(
            lay,
            f"CREATE DATABASE IF NOT EXISTS {DB_NAME};\n"
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\nFLUSH PRIVILEGES;\n",
            "creating slurmdbd's database user",
        )
        marker.write_text("mariadb-install-db and slurmdbd's user done\n")
    return int(pid)


def sacctmgr_error(lay: L.Layout) -> str:
    """``""`` when sacctmgr on login1 gets an answer from slurmdbd, else its complaint."""
    argv = ns_argv(lay, L.LOGIN_NS, ["sacctmgr", "-n", "-P", "show", "cluster", "format=Cluster"])
    result = run(argv, check=False, timeout=15)
    if result.returncode == 0:
        return ""
    return (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"


def start_slurmdbd(lay: L.Layout, timeout: float = 60) -> int:
    """Start slurmdbd in the login namespace if it is not running; wait until it answers."""
    pid = daemon_pid(lay, "slurmdbd")
    if pid is None:
        run(ns_argv(lay, L.LOGIN_NS, ["/usr/sbin/slurmdbd"]), what="starting slurmdbd in the login namespace")
        pid = wait_until(lambda: daemon_pid(lay, "slurmdbd"), "slurmdbd to write its pid file", timeout)
    try:
        wait_until(lambda: not sacctmgr_error(lay), "slurmdbd to answer sacctmgr", timeout, 0.3)
    except SandboxError as exc:
        raise SandboxError(f"{exc}: {sacctmgr_error(lay)} (see {lay.log_dir / 'slurmdbd.log'})") from exc
    return int(pid)


def _sacctmgr_add(lay: L.Layout, args: list[str]) -> None:
    result = run(ns_argv(lay, L.LOGIN_NS, ["sacctmgr", "-i", *args]), check=False, timeout=30)
    text = (result.stdout + result.stderr).lower()
    if result.returncode != 0 and "nothing new added" not in text and "already exist" not in text:
        raise SandboxError(f"sacctmgr {' '.join(args)}: exit status {result.returncode}: {text.strip()}")


def add_associations(lay: L.Layout) -> None:
    """Cluster, accounts and the users' associations (:data:`ASSOCIATIONS`); idempotent."""
    _sacctmgr_add(lay, ["add", "cluster", CLUSTER])
    for account, description in ACCOUNTS.items():
        _sacctmgr_add(lay, ["add", "account", account, f"cluster={CLUSTER}", f"description={description}",
                            "organization=hpcgate-sandbox"])  # fmt: skip
    for user, (accounts, default) in ASSOCIATIONS.items():
        _sacctmgr_add(lay, ["add", "user", user, f"account={','.join(accounts)}", f"defaultaccount={default}",
                            f"cluster={CLUSTER}"])  # fmt: skip


def start_accounting(lay: L.Layout) -> dict[str, int]:
    """MariaDB, slurmdbd and the associations (before slurmctld starts)."""
    setup_accounting(lay)  # idempotent; a sandbox found up may have been built without it
    pids = {"mariadbd": start_mariadbd(lay), "slurmdbd": start_slurmdbd(lay)}
    add_associations(lay)
    return pids
