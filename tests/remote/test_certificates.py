"""Identity mode ``certificate`` against a real OpenSSH sshd on loopback.

The sshd (harness/sshd.py) trusts a CA made by ``hpcgate.remote.certs.init_ca`` (what
``hpcgate ca init`` runs) through ``TrustedUserCAKeys``, ``AuthorizedPrincipalsFile``
and ``RevokedKeys``. Every refusal below is sshd's own decision.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh
import pytest

from harness.keyscan import cert_login_keys, files_holding
from harness.sshd import USERS, running_sshd
from hpcgate.catalog import Identity, System
from hpcgate.cli import main as hpcgate_main
from hpcgate.remote import certs
from hpcgate.remote.pool import RemoteError, SSHPool
from hpcgate.remote.targets import SystemRemote
from hpcgate.remote.tunnels import TunnelManager
from tests.hub.backends.test_ssh import make_backend, spec_for, wait_address
from tests.remote.test_tunnels import http_get

HOST = "127.0.0.1"


def cert_remote(sshd, pool, hub_users=None, **identity) -> SystemRemote:
    data = sshd.system_data(ssh={"identity": sshd.certificate_identity(**identity)})
    return SystemRemote("testsys", System.model_validate(data), pool, hub_users_of=hub_users)


async def login(sshd, username: str, key, cert) -> str:
    """Log in with ``key``+``cert`` and run ``id -un``; PermissionDenied if sshd refuses."""
    async with asyncssh.connect(
        HOST,
        sshd.port,
        username=username,
        client_keys=[(key, cert)],
        known_hosts=str(sshd.known_hosts),
        config=[],
        agent_path=None,
        preferred_auth="publickey",
    ) as conn:
        return (await conn.run("id -un", check=True)).stdout.strip()


def described(cert) -> str:
    """OpenSSH's own reading of a certificate (``ssh-keygen -L``)."""
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", "/dev/stdin"], input=cert.export_certificate(), capture_output=True, check=True
    ).stdout.decode()


def sshd_log_since(sshd, offset: int) -> str:
    return sshd.log.read_bytes()[offset:].decode(errors="replace")


async def test_each_connection_gets_a_fresh_certificate_for_exactly_its_account(sshd):
    pool = SSHPool()
    owners = {USERS[0]: ["ann"], USERS[1]: ["ben", "benjamin"]}
    remote = cert_remote(sshd, pool, hub_users=lambda system, account: owners[account])
    offset = sshd.log.stat().st_size
    try:
        for user in USERS:
            result = await remote.run(HOST, user, ["id", "-un"], check=True)
            assert result.stdout.strip() == user
        # pooled per (host, account), the certificate made at connect time
        assert len(pool._entries) == 2
        target = remote.target(HOST, USERS[0])
        assert target.certificate is not None and target.key_path == ""
        key, cert = target.certificate.credentials(USERS[0])
        text = described(cert)
        assert cert.principals == [USERS[0]] and 'Key ID: "hpcgate/ann@testsys"' in text
        assert "permit-port-forwarding" in text and "permit-pty" not in text and "permit-user-rc" not in text
        # a new pair every time: the key of one connection never serves another
        key2, _ = target.certificate.credentials(USERS[0])
        assert key.public_data != key2.public_data
        log = sshd_log_since(sshd, offset)
        # sshd's log names the hub user and the system of every login
        assert f"Accepted publickey for {USERS[0]}" in log and "ID hpcgate/ann@testsys" in log
        assert "ID hpcgate/ben+benjamin@testsys" in log
    finally:
        await pool.close()


async def test_alices_certificate_cannot_log_in_as_bob(sshd):
    ca = certs.load_ca(sshd.ca_key)
    key, cert = certs.issue(ca, USERS[0], "hpcgate/ann@testsys", 60)
    assert await login(sshd, USERS[0], key, cert) == USERS[0]
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[1], key, cert)
    # nor through the pool: a target is the account it logs in as
    pool = SSHPool()
    try:
        remote = cert_remote(sshd, pool)
        assert remote.target(HOST, USERS[1]).username == USERS[1]
    finally:
        await pool.close()


async def test_expired_and_not_yet_valid_certificates_are_refused(sshd):
    ca = certs.load_ca(sshd.ca_key)
    key, expired = certs.issue(ca, USERS[0], "hpcgate/ann@testsys", 60, now=time.time() - 3600)
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[0], key, expired)
    key, early = certs.issue(ca, USERS[0], "hpcgate/ann@testsys", 60, now=time.time() + 3600)
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[0], key, early)


async def test_source_address_is_enforced(sshd):
    pool = SSHPool()
    try:
        elsewhere = cert_remote(sshd, pool, source_addresses=["192.0.2.10"])
        with pytest.raises(RemoteError, match=rf"{HOST}:{sshd.port} refused the login of {USERS[0]}"):
            await elsewhere.run(HOST, USERS[0], ["true"])
        here = cert_remote(sshd, pool, source_addresses=["127.0.0.0/8", "192.0.2.10"])
        assert (await here.run(HOST, USERS[0], ["true"])).ok
        cert = here.target(HOST, USERS[0]).certificate.credentials(USERS[0])[1]
        assert "source-address 127.0.0.0/8,192.0.2.10/32" in described(cert)
    finally:
        await pool.close()


def test_catalog_refuses_bad_source_addresses():
    with pytest.raises(ValueError, match="'hub.example' is not an IP address or network"):
        Identity.model_validate({"mode": "certificate", "source_addresses": ["hub.example"]})


async def test_existing_connections_outlive_their_certificate_new_ones_get_a_new_one(sshd):
    pool = SSHPool()
    remote = cert_remote(sshd, pool, certificate_minutes=3 / 60)  # 3 seconds
    try:
        target = remote.target(HOST, USERS[0])
        first = await pool.connection(target)
        assert (await remote.run(HOST, USERS[0], ["true"])).ok
        await asyncio.sleep(4.5)  # the certificate of `first` has expired
        # sshd checks a certificate at login only: the open connection keeps working
        assert (await remote.run(HOST, USERS[0], ["true"])).ok
        assert await pool.connection(target) is first
        first.close()
        await first.wait_closed()
        # the next connection signs a new certificate: it logs in although the old one expired
        assert (await remote.run(HOST, USERS[0], ["id", "-un"], check=True)).stdout.strip() == USERS[0]
        assert await pool.connection(target) is not first
    finally:
        await pool.close()


async def test_a_ca_that_cannot_be_read_is_one_sentence(sshd, tmp_path):
    pool = SSHPool()
    try:
        missing = cert_remote(sshd, pool, ca_key=str(tmp_path / "nope" / "ca_key"))
        with pytest.raises(RemoteError, match=r"cannot sign a certificate for hpcgt-ann@127\.0\.0\.1: .*hpcgate ca init"):
            await missing.run(HOST, USERS[0], ["true"])
        loose = tmp_path / "loose_key"
        shutil.copy(sshd.ca_key, loose)
        os.chmod(loose, 0o644)
        with pytest.raises(RemoteError, match=r"may be read by others \(mode 644\); chmod 600 it"):
            await cert_remote(sshd, pool, ca_key=str(loose)).run(HOST, USERS[0], ["true"])
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def krl_sshd():
    """An sshd of its own: these tests change its CA's revocation list."""
    with running_sshd("hpcgate-sshd-krl-") as server:
        yield server


async def test_revocation_list_refuses_a_key_a_user_on_a_system_and_the_whole_ca(krl_sshd, capsys):
    sshd = krl_sshd
    ca = certs.load_ca(sshd.ca_key)
    ann = "hpcgate/ann@testsys"
    key, cert = certs.issue(ca, USERS[0], ann, 60)
    assert await login(sshd, USERS[0], key, cert) == USERS[0]
    # one key (as `hpcgate ca revoke --key` does it): that key is refused, a new one is not
    assert hpcgate_main(["ca", "--dir", str(sshd.ca_dir), "revoke", "--key", key.export_public_key().decode()]) == 0
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[0], key, cert)
    assert await login(sshd, USERS[0], *certs.issue(ca, USERS[0], ann, 60)) == USERS[0]
    # a key id: every certificate naming ann on testsys is refused; ben still logs in
    assert hpcgate_main(["ca", "--dir", str(sshd.ca_dir), "revoke", "--key-id", ann]) == 0
    assert "RevokedKeys" in capsys.readouterr().out
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[0], *certs.issue(ca, USERS[0], ann, 60))
    assert await login(sshd, USERS[1], *certs.issue(ca, USERS[1], "hpcgate/ben@testsys", 60)) == USERS[1]
    listed = subprocess.run(["ssh-keygen", "-Q", "-l", "-f", str(sshd.ca_dir / certs.KRL_FILE)], capture_output=True, text=True)
    assert f"id: {ann}" in listed.stdout
    # the CA key itself: nothing it signed logs in any more
    assert hpcgate_main(["ca", "--dir", str(sshd.ca_dir), "revoke", "--ca"]) == 0
    with pytest.raises(asyncssh.PermissionDenied):
        await login(sshd, USERS[1], *certs.issue(ca, USERS[1], "hpcgate/ben@testsys", 60))
    assert hpcgate_main(["ca", "--dir", str(sshd.ca_dir), "revoke"]) == 2


def test_ca_init_show_and_file_modes(tmp_path, capsys):
    directory = tmp_path / "state" / "ssh-ca"
    assert hpcgate_main(["ca", "--state-dir", str(tmp_path / "state"), "init"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ssh-ed25519 ") and line == (directory / "ca_key.pub").read_text().strip()
    assert (directory.stat().st_mode & 0o777, (directory / "ca_key").stat().st_mode & 0o777) == (0o700, 0o600)
    assert hpcgate_main(["ca", "--dir", str(directory), "show"]) == 0
    assert capsys.readouterr().out.strip() == line
    # never replaced by accident: hosts trust this key
    assert hpcgate_main(["ca", "--dir", str(directory), "init"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (directory / "ca_key.pub").read_text().strip() == line
    assert hpcgate_main(["ca", "--dir", str(directory), "init", "--force"]) == 0
    assert capsys.readouterr().out.strip() != line


async def test_tunnels_and_servers_work_with_certificates_and_no_key_is_written(sshd, tmp_path):
    identity = {"identity": sshd.certificate_identity(), "tunnel_key": None, "connection_file": True}
    backend, catalog = make_backend(sshd, tmp_path, ssh=identity)
    assert backend.system.ssh.identity.mode == "certificate"
    manager = TunnelManager(state_dir=str(tmp_path), reconnect_min_delay=0.2, reconnect_max_delay=1.0)
    # the keys of this test's logins are made after this: only files written since can hold them
    offset, started = sshd.log.stat().st_size, time.time() - 1
    handle = await backend.submit(spec_for(catalog, USERS[0]))
    try:
        host, port = await wait_address(backend, handle)
        local = await manager.open_forward("login", backend.system, "ann/", host, port, timeout=10)
        assert json.loads(await http_get(local))["user"] == USERS[0]
        log = sshd_log_since(sshd, offset)
        assert "hpcgate/tunnel@login" in log and "hpcgate/account:hpcgt-ann@login" in log
    finally:
        await manager.close()
        await backend.cancel(handle)
        await backend.close()
    # nothing of the users' credentials was written: the keys sshd accepted with a
    # certificate are in no file on the hub side
    logins = cert_login_keys(sshd_log_since(sshd, offset))
    assert {account for account, _ in logins.values()} == {USERS[0], "hpcgt-tun"}
    assert files_holding(logins, tmp_path, Path(tempfile.gettempdir()), since=started) == []
    # the scan would see one: a certificate key that logged in, then written to a file
    key, cert = certs.issue(certs.load_ca(sshd.ca_key), USERS[1], "hpcgate/ben@login", 60)
    offset = sshd.log.stat().st_size
    assert await login(sshd, USERS[1], key, cert) == USERS[1]
    await asyncio.sleep(0.2)
    (tmp_path / "written").write_bytes(key.export_private_key())
    assert files_holding(cert_login_keys(sshd_log_since(sshd, offset)), tmp_path) == [tmp_path / "written"]


def test_key_ids_name_the_hub_users_and_the_system_in_one_word():
    assert certs.key_id("cluster", ["bob", "alice", "alice"], "x") == "hpcgate/alice+bob@cluster"
    assert certs.key_id("cluster", [], "hpcg-ann") == "hpcgate/account:hpcg-ann@cluster"
    # a log line or a KRL spec line can never be split by a name
    assert certs.key_id("c", ["a b\n(serial 1)"], "x") == "hpcgate/a_b__serial_1_@c"
