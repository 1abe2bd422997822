"""The sandbox cluster: isolation, SSH as real users, Slurm jobs on compute1, restarts.

Real namespaces, OpenSSH, munge and Slurm (see hpcgate.sandbox). The last test takes
the sandbox down, checks that nothing is left, and brings it up again.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from harness.missing import unavailable
from harness.sandbox import cut_hub_link, restore_hub_link, wait_job
from hpcgate.catalog import Catalog, CatalogModel, load_catalog
from hpcgate.net import free_port
from hpcgate.remote import certs
from hpcgate.sandbox import Sandbox, SandboxError, cli
from hpcgate.sandbox import layout as L
from hpcgate.sandbox.catalog import catalog_data
from hpcgate.sandbox.network import namespaces, sandbox_routes
from hpcgate.sandbox.proc import pid_alive, pids_of_users, tcp_open, wait_until
from hpcgate.sandbox.users import account_uids

pytestmark = pytest.mark.sandbox

#: Connects to argv[1]:argv[2] from wherever it runs; prints "open" or "closed <error>".
PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("open")
except OSError as exc:
    print("closed", exc)
"""


def probe(sandbox: Sandbox, ns: str, host: str, port: int) -> str:
    out = sandbox.run_in(ns, ["/usr/bin/python3", "-c", PROBE, host, str(port)], timeout=15).stdout
    return out.split()[0]


@contextmanager
def listener(host: str):
    """A TCP listener in the root namespace (the hub side) that accepts and closes."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def ssh(sandbox: Sandbox, account: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        sandbox.info.ssh_argv(account, *command), capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def ssh_session(sandbox: Sandbox, account: str):
    """An ssh session running ``sleep 60`` as ``account``, started and running on yield."""
    session = subprocess.Popen(
        sandbox.info.ssh_argv(account, "sleep", "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(
            lambda: ssh(sandbox, account, "pgrep", "-u", account, "-x", "sleep").returncode == 0,
            f"the ssh session of {account} to start",
            15,
            0.2,
        )
        yield session
    finally:
        session.kill()
        session.wait()


@contextmanager
def forwarding(sandbox: Sandbox, *forward: str):
    """``ssh -N`` as the tunnel account with the given -L/-R options; stopped on exit."""
    argv = sandbox.info.ssh_argv(L.TUNNEL_ACCOUNT)
    argv[1:1] = ["-N", "-o", "ExitOnForwardFailure=yes", *forward]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def exclusive(sandbox):
    """The sandbox, for tests that stop parts of it: skipped while other sessions use it."""
    others = sandbox.other_holders()
    if others:
        unavailable(
            f"other test sessions use the sandbox (pids {others}); not disturbing them",
            "CI runs one test session, so a holder there is one left behind",
        )
    return sandbox


def load_catalog_data(data: dict) -> Catalog:
    return Catalog(CatalogModel.model_validate(data))


# --- the cluster as built -----------------------------------------------------------


def test_up_reports_a_running_cluster(sandbox):
    info = sandbox.info
    assert sandbox.is_up()
    assert set(info.pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sshd"}
    assert all(pid_alive(pid) for pid in info.pids.values())
    again = sandbox.up()  # idempotent: reports the same daemons
    assert again.pids == info.pids
    status = sandbox.status()
    assert status["up"]
    assert status["compute_state"] in ("idle", "mixed", "allocated")
    assert status["catalog"] == str(info.catalog)


def test_catalog_matches_the_cluster(sandbox):
    info = sandbox.info
    catalog = load_catalog(info.catalog)
    assert set(catalog.systems) == {"login", "cluster"}
    cluster = catalog.systems["cluster"]
    assert cluster.kind == "slurm" and cluster.hosts == [info.login_addr]
    out = sandbox.run_in("login", ["sinfo", "-h", "-o", "%R"]).stdout.split()
    assert sorted(out) == sorted(cluster.partitions) == sorted(info.partitions)
    ssh_settings = cluster.ssh
    assert ssh_settings.known_hosts == str(info.known_hosts)
    assert ssh_settings.tunnel_account == info.tunnel_account
    # short-lived certificates of the sandbox CA, only from the hub's address
    identity = ssh_settings.identity
    assert identity.mode == "certificate" and Path(identity.ca_key) == info.ca_key
    assert identity.source_addresses == [f"{info.hub_addr}/32"] and ssh_settings.tunnel_key is None
    # the per-user keys stay for identity user_key (the same catalog, other logins)
    keyed = load_catalog_data(catalog_data(sandbox.layout, identity="user_key")).systems["cluster"].ssh
    for account in info.accounts:
        assert Path(keyed.identity.key_path.format(account=account)) == info.keys[account]
    assert cluster.singleuser_command[0].startswith(str(info.venv))
    assert cluster.accounts.source == "map_file"
    assert yaml.safe_load(Path(cluster.accounts.map_file).read_text()) == info.users


def cert_ssh_argv(info, tmp: Path, cert_for: str, login_as: str, **issue) -> list[str]:
    """OpenSSH's client with a fresh key and a certificate for ``cert_for`` (0600 in ``tmp``)."""
    key, cert = certs.issue(certs.load_ca(info.ca_key), cert_for, f"hpcgate/test@{cert_for}", 60, **issue)
    (tmp / "id").write_bytes(key.export_private_key())
    os.chmod(tmp / "id", 0o600)
    (tmp / "id-cert.pub").write_bytes(cert.export_certificate())
    argv = info.ssh_argv(login_as, "id", "-un")
    argv[argv.index("-i") + 1] = str(tmp / "id")
    return [*argv[:1], "-o", f"CertificateFile={tmp / 'id-cert.pub'}", *argv[1:]]


def test_sshd_trusts_the_ca_for_each_accounts_own_name_from_the_hub_only(sandbox, tmp_path):
    info = sandbox.info
    config = (sandbox.layout.sshd_dir / "sshd_config").read_text()
    assert f"TrustedUserCAKeys {info.ca_key}.pub" in config and "AuthorizedPrincipalsFile" in config
    assert stat.S_IMODE(info.ca_key.stat().st_mode) == 0o600
    alice, bob = info.users["alice"], info.users["bob"]
    ok = subprocess.run(cert_ssh_argv(info, tmp_path, alice, alice), capture_output=True, text=True, timeout=30)
    assert ok.stdout.strip() == alice, ok.stderr
    as_bob = subprocess.run(cert_ssh_argv(info, tmp_path, alice, bob), capture_output=True, text=True, timeout=30)
    assert as_bob.returncode == 255 and "Permission denied" in as_bob.stderr
    # the hub reaches login1 from 10.250.1.1: a certificate for the compute side's network is refused
    elsewhere = cert_ssh_argv(info, tmp_path, alice, alice, source_addresses=["10.250.2.0/24"])
    refused = subprocess.run(elsewhere, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    ok = cert_ssh_argv(info, tmp_path, alice, alice, source_addresses=[f"{info.hub_addr}/32"])
    assert subprocess.run(ok, capture_output=True, text=True, timeout=30).stdout.strip() == alice


def test_keys_are_private(sandbox):
    for account, key in sandbox.info.keys.items():
        st = key.stat()
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, key
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700, key.parent
        home = Path(pwd.getpwnam(account).pw_dir)
        auth = home / ".ssh" / "authorized_keys"
        assert auth.stat().st_uid == pwd.getpwnam(account).pw_uid
        assert key.with_suffix(".pub").read_text().split()[1] in auth.read_text()


def test_node_names(sandbox):
    assert sandbox.run_in("login", ["hostname"]).stdout.strip() == "login1"
    assert sandbox.run_in("compute", ["hostname"]).stdout.strip() == "compute1"
    resolve = ["getent", "hosts", "login1"]
    assert sandbox.run_in("compute", resolve).stdout.split()[0] == L.LOGIN_INNER_ADDR
    assert sandbox.run_in("login", resolve).stdout.split()[0] == L.LOGIN_ADDR
    assert socket.gethostname() not in ("login1", "compute1")  # root namespace untouched


# --- the network model ----------------------------------------------------------------


def test_compute_and_hub_cannot_reach_each_other(sandbox):
    assert "blackhole 10.250.0.0/16" in "\n".join(sandbox_routes())
    assert sandbox.run_in("login", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    with listener(L.HUB_ADDR) as port:
        assert probe(sandbox, "login", L.HUB_ADDR, port) == "open"
        assert probe(sandbox, "compute", L.HUB_ADDR, port) == "closed"
    slurmd_port = 6818
    assert probe(sandbox, "login", L.COMPUTE_ADDR, slurmd_port) == "open"
    assert not tcp_open(L.COMPUTE_ADDR, slurmd_port, timeout=2)
    assert not tcp_open(L.LOGIN_INNER_ADDR, L.SSH_PORT, timeout=2)


def test_login_reaches_both_sides(sandbox):
    assert tcp_open(L.LOGIN_ADDR, L.SSH_PORT)  # hub -> login
    assert probe(sandbox, "compute", L.LOGIN_INNER_ADDR, L.SSH_PORT) == "open"  # compute -> login
    assert probe(sandbox, "login", L.COMPUTE_ADDR, 6818) == "open"  # login -> compute


# --- SSH ----------------------------------------------------------------------------


@pytest.mark.parametrize("hub_user", sorted(L.HUB_USERS))
def test_ssh_as_each_user_with_their_key(sandbox, hub_user):
    account = sandbox.info.users[hub_user]
    result = ssh(sandbox, account, "id", "-un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == account


def test_ssh_refuses_another_users_key(sandbox):
    info = sandbox.info
    argv = info.ssh_argv("hpcg-alice", "id", "-un")
    argv[argv.index("hpcg-alice@" + info.login_addr)] = "hpcg-bob@" + info.login_addr
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def test_tunnel_account_forwards_but_has_no_shell(sandbox):
    result = ssh(sandbox, L.TUNNEL_ACCOUNT, "id")
    assert result.returncode != 0
    local = free_port()
    with forwarding(sandbox, "-L", f"127.0.0.1:{local}:{L.COMPUTE_ADDR}:6818"):
        wait_until(lambda: tcp_open("127.0.0.1", local), "the -L forward to compute1", 15)


def test_hub_api_forward_reaches_the_hub_from_compute(sandbox):
    """The path of hub_api_forward: compute -> 10.250.2.1:port -> ssh -R -> hub."""
    remote = free_port()
    with listener("127.0.0.1") as hub_port:
        with forwarding(sandbox, "-R", f"{L.LOGIN_INNER_ADDR}:{remote}:127.0.0.1:{hub_port}"):
            wait_until(
                lambda: probe(sandbox, "compute", L.LOGIN_INNER_ADDR, remote) == "open",
                "the hub API forward to answer from compute1",
                15,
                0.3,
            )


def test_tunnel_account_may_not_listen_everywhere(sandbox):
    with forwarding(sandbox, "-R", f"0.0.0.0:{free_port()}:127.0.0.1:9") as proc:
        proc.wait(timeout=20)
        assert proc.returncode != 0
        assert "remote port forwarding failed" in proc.stderr.read()


# --- Slurm --------------------------------------------------------------------------


def test_sbatch_as_a_user_runs_on_compute1(sandbox):
    result = ssh(sandbox, "hpcg-alice", "sbatch", "--parsable", "--wrap", "hostname")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    fields = wait_job(sandbox, job)
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["NodeList"] == "compute1"
    out = Path(fields["StdOut"])
    assert out.read_text().strip() == "compute1"
    assert out.stat().st_uid == pwd.getpwnam("hpcg-alice").pw_uid


def test_job_venv_is_usable_by_users(sandbox):
    venv_python = str(sandbox.info.venv / "bin" / "python")
    code = "import hpcgate, jupyterlab, jupyterhub; print(hpcgate.__version__)"
    result = sandbox.run_in("compute", [venv_python, "-c", code], user="hpcg-bob")
    assert result.stdout.strip()
    assert os.access(sandbox.info.venv / "bin" / "hpcgate-singleuser", os.X_OK)


@pytest.mark.parametrize(("ns", "address"), [("compute", L.COMPUTE_ADDR), ("login", L.LOGIN_ADDR)])
def test_singleuser_binds_the_node_address(sandbox, ns, address):
    """hpcgate-singleuser binds to its host name's address: the node's, not loopback."""
    venv_python = str(sandbox.info.venv / "bin" / "python")
    code = "from hpcgate.singleuser import bind_address; print(bind_address())"
    assert sandbox.run_in(ns, [venv_python, "-c", code], user="hpcg-alice").stdout.strip() == address


def test_jobs_survive_a_controller_restart(exclusive):
    sandbox = exclusive
    result = ssh(sandbox, "hpcg-bob", "sbatch", "--parsable", "--wrap", "sleep 3; hostname")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    sandbox.stop_slurmctld()
    assert sandbox.daemon_pids()["slurmctld"] is None
    ping = sandbox.run_in("login", ["scontrol", "ping"], check=False)
    assert ping.returncode != 0 and "DOWN" in ping.stdout
    sandbox.start_slurmctld()
    assert wait_job(sandbox, job)["JobState"] == "COMPLETED"


def test_sshd_stop_drops_connections_and_start_restores(exclusive):
    sandbox = exclusive
    info = sandbox.info
    try:
        with ssh_session(sandbox, "hpcg-alice") as session:
            sandbox.stop_sshd()
            assert not tcp_open(info.login_addr, info.ssh_port)
            assert session.wait(timeout=15) != 0  # the connection dropped
            assert ssh(sandbox, "hpcg-alice", "true").returncode != 0
    finally:
        pid = sandbox.start_sshd()
    assert pid_alive(pid)
    assert ssh(sandbox, "hpcg-alice", "id", "-un").stdout.strip() == "hpcg-alice"


def test_cut_hub_link_drops_packets_silently(exclusive):
    sandbox = exclusive
    info = sandbox.info
    with ssh_session(sandbox, "hpcg-alice") as session:
        try:
            cut_hub_link(sandbox)
            started = time.monotonic()
            assert not tcp_open(info.login_addr, info.ssh_port, timeout=1.5)
            assert time.monotonic() - started >= 1.4  # a timeout, not a refusal
            assert session.poll() is None  # the established connection hangs, it is not reset
        finally:
            restore_hub_link(sandbox)
    assert ssh(sandbox, "hpcg-alice", "id", "-un").stdout.strip() == "hpcg-alice"


# --- the CLI ------------------------------------------------------------------------


def test_cli_refuses_non_root_with_a_clear_error(sandbox):
    hpcgate = str(sandbox.info.venv / "bin" / "hpcgate")  # world-readable, unlike .venv
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", hpcgate, "sandbox", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 2, result
    assert "needs root" in result.stderr and "run it as root" in result.stderr


def test_cli_status_prints_the_catalog_and_keys(sandbox, capsys):
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert str(sandbox.info.catalog) in out
    for key in sandbox.info.keys.values():
        assert str(key) in out


def test_api_refuses_non_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(SandboxError, match="needs root"):
        Sandbox().down()


# --- down leaves nothing; up again ------------------------------------------------------


def test_a_session_that_was_killed_leaves_nothing_to_the_next(exclusive):
    """A test session killed while it held the sandbox leaves it up with its jobs,
    labs and logins. The next session (nobody else holding it) gets a clean sandbox: a
    new Slurm controller without the old jobs, no process of a sandbox account."""
    sandbox = exclusive
    leftover = sandbox.run_in(
        "login", ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 600"], user="hpcg-bob"
    ).stdout.strip()
    ctld = sandbox.info.pids["slurmctld"]
    killed = subprocess.Popen(
        [sys.executable, "-c", "from hpcgate.sandbox import Sandbox; Sandbox().hold(); print('held', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert killed.stdout is not None and killed.stdout.readline().strip() == "held"
    finally:
        killed.kill()
        killed.wait()
    sandbox.release(keep=True)  # this session steps back: only the killed one held it
    sandbox.hold()
    assert sandbox.is_up() and sandbox.info.pids["slurmctld"] != ctld and not pid_alive(ctld)
    ids = sandbox.run_in("login", ["squeue", "-h", "-t", "all", "-o", "%i"]).stdout.split()
    assert leftover not in ids, ids
    assert pids_of_users(account_uids()) == []
    assert ssh(sandbox, "hpcg-alice", "id", "-un").stdout.strip() == "hpcg-alice"


def test_down_leaves_nothing_and_up_rebuilds(exclusive):
    sandbox = exclusive
    pids = dict(sandbox.info.pids)
    owned_by_tests = sandbox.layout.test_owned_marker.exists()
    session = subprocess.Popen(sandbox.info.ssh_argv("hpcg-bob", "sleep", "300"))
    try:
        wait_until(lambda: any(pids_of_users(account_uids())), "a session of hpcg-bob", 15, 0.2)
        started = time.monotonic()
        sandbox.down()
        down_seconds = time.monotonic() - started
    finally:
        session.kill()
        session.wait()
    assert not {L.LOGIN_NS, L.COMPUTE_NS} & namespaces()
    assert sandbox_routes() == []
    assert not any(pid_alive(pid) for pid in pids.values()), pids
    assert pids_of_users(account_uids()) == []
    assert not Path("/run/hpcgate-sandbox").exists()
    assert not any(
        line.split()[4].startswith("/run/hpcgate-sandbox") for line in open("/proc/self/mountinfo")
    )
    assert not sandbox.is_up()
    with pytest.raises(SandboxError, match="not up"):
        _ = sandbox.info
    started = time.monotonic()
    info = sandbox.up()
    up_seconds = time.monotonic() - started
    if owned_by_tests:  # the session's release() removes it again, as before
        sandbox.layout.test_owned_marker.touch()
    print(f"\nsandbox down {down_seconds:.2f} s, up (venv cached) {up_seconds:.2f} s: {info.timings}")
    assert sandbox.is_up()
    assert ssh(sandbox, "hpcg-alice", "id", "-un").stdout.strip() == "hpcg-alice"
