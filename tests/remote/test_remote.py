"""hpcgate.remote and hpcgate.hub.identity.accounts against a real sshd on loopback."""

from __future__ import annotations

import asyncio
import os

import pytest

from harness.sshd import USERS
from hpcgate.catalog import AccountMapping, System
from hpcgate.hub.identity.accounts import AccountError, AccountResolver
from hpcgate.net import free_port
from hpcgate.remote import RemoteError, SSHPool, SystemRemote, run_local


def remote_for(sshd, pool, **overrides) -> SystemRemote:
    return SystemRemote("testsys", System.model_validate(sshd.system_data(**overrides)), pool)


async def test_runs_argv_as_the_users_account(sshd):
    pool = SSHPool()
    remote = remote_for(sshd, pool)
    try:
        for user in USERS:
            result = await remote.run("127.0.0.1", user, ["id", "-un"], check=True)
            assert result.stdout.strip() == user
        # arguments reach the command as words, never re-parsed by a shell
        tricky = "a b; echo injected $(id) 'q\" *"
        result = await remote.run("127.0.0.1", USERS[0], ["printf", "%s", tricky], check=True)
        assert result.stdout == tricky
    finally:
        await pool.close()


async def test_connections_are_pooled_per_host_and_account(sshd):
    pool = SSHPool(max_sessions=4)
    remote = remote_for(sshd, pool)
    try:
        results = await asyncio.gather(
            *(remote.run("127.0.0.1", USERS[i % 2], ["true"]) for i in range(20))
        )
        assert all(r.ok for r in results)
        assert len(pool._entries) == 2
        first = await pool.connection(remote.target("127.0.0.1", USERS[0]))
        await remote.run("127.0.0.1", USERS[0], ["true"])
        assert await pool.connection(remote.target("127.0.0.1", USERS[0])) is first
        # a dropped connection is replaced on the next use
        first.close()
        await first.wait_closed()
        assert (await remote.run("127.0.0.1", USERS[0], ["true"])).ok
        assert await pool.connection(remote.target("127.0.0.1", USERS[0])) is not first
    finally:
        await pool.close()


async def test_idle_connections_are_closed_and_busy_ones_kept(sshd):
    pool = SSHPool(idle_timeout=0.3)
    remote = remote_for(sshd, pool)
    try:
        # a command that outlasts the idle timeout keeps its connection
        result = await remote.run("127.0.0.1", USERS[0], ["sleep", "1"])
        assert result.ok and pool.evicted == 0
        target = remote.target("127.0.0.1", USERS[0])
        first = await pool.connection(target)
        for _ in range(100):
            if pool.evicted:
                break
            await asyncio.sleep(0.1)
        assert pool.evicted == 1 and first.is_closed() and not pool._entries
        # the next command opens a new one
        assert (await remote.run("127.0.0.1", USERS[0], ["true"])).ok
        assert await pool.connection(target) is not first
    finally:
        await pool.close()


async def test_secrets_go_through_stdin_not_argv(sshd):
    pool = SSHPool()
    remote = remote_for(sshd, pool)
    secret = "s3cr3t-token-" + os.urandom(8).hex()
    try:
        # the remote side sees the secret on stdin; its own argv does not contain it
        result = await remote.run_script(
            "127.0.0.1", USERS[0], 'read -r value; cat /proc/$$/cmdline | tr "\\0" " "; echo; echo "$value"', [],
            input=secret + "\n", check=True,
        )
        cmdline, value = result.stdout.strip().splitlines()
        assert value == secret
        assert secret not in cmdline
    finally:
        await pool.close()


async def test_errors_name_the_host_and_the_cause(sshd):
    pool = SSHPool()
    closed = free_port()
    try:
        remote = remote_for(sshd, pool, ssh={"port": closed})
        with pytest.raises(RemoteError, match=rf"cannot reach 127\.0\.0\.1:{closed}: connection refused"):
            await remote.run("127.0.0.1", USERS[0], ["true"])
        wrong_key = remote_for(sshd, pool, ssh={"identity": {"mode": "user_key", "key_path": str(sshd.keys[USERS[1]])}})
        with pytest.raises(RemoteError, match=rf"127\.0\.0\.1:{sshd.port} refused the login of {USERS[0]}"):
            await wrong_key.run("127.0.0.1", USERS[0], ["true"])
        missing = remote_for(sshd, pool, ssh={"identity": {"mode": "user_key", "key_path": "/nonexistent/{account}"}})
        with pytest.raises(RemoteError, match=r"cannot use the SSH key /nonexistent/hpcgt-ann"):
            await missing.run("127.0.0.1", USERS[0], ["true"])
        remote = remote_for(sshd, pool)
        with pytest.raises(RemoteError, match=r"sleep on 127\.0\.0\.1 as hpcgt-ann gave no answer within 1 s"):
            await remote.run("127.0.0.1", USERS[0], ["sleep", "5"], timeout=1)
        with pytest.raises(RemoteError, match=r"false on 127\.0\.0\.1 as hpcgt-ann failed \(exit 1\)"):
            await remote.run("127.0.0.1", USERS[0], ["false"], check=True)
    finally:
        await pool.close()


async def test_service_account_switches_to_the_users_account(sshd):
    pool = SSHPool()
    remote = remote_for(
        sshd,
        pool,
        ssh={
            "identity": {
                "mode": "service_account",
                "service_account": "root",
                "service_key": str(sshd.keys["root"]),
                "switch_user": ["runuser", "-u", "{account}", "--"],
            }
        },
    )
    try:
        for user in USERS:
            result = await remote.run("127.0.0.1", user, ["sh", "-c", 'id -un; echo "$HOME"'], check=True)
            assert result.stdout.split() == [user, f"/home/{user}"]
        # one connection (the service account's) serves every user
        assert len(pool._entries) == 1
    finally:
        await pool.close()


async def test_run_local():
    result = await run_local(["sh", "-c", "cat; echo done"], input="in\n")
    assert (result.returncode, result.stdout) == (0, "in\ndone\n")
    with pytest.raises(RemoteError, match="cannot run /nonexistent/x on the hub host"):
        await run_local(["/nonexistent/x"])


def test_accounts_from_hub_name_auth_state_and_map_file(tmp_path):
    assert AccountResolver("s", AccountMapping()).account("alice") == "alice"
    with pytest.raises(AccountError, match="cannot be used by hpcgate"):
        AccountResolver("s", AccountMapping()).account("../etc")
    by_claim = AccountResolver("s", AccountMapping(source="auth_state", key="uid"))
    assert by_claim.needs_auth_state
    assert by_claim.account("alice@example.org", {"uid": "al123"}) == "al123"
    with pytest.raises(AccountError, match="did not tell hpcgate your account on s"):
        by_claim.account("alice@example.org", {})
    mapping = tmp_path / "map.yaml"
    mapping.write_text("alice: hpc-alice\n")
    by_file = AccountResolver("s", AccountMapping(source="map_file", map_file=str(mapping)))
    assert by_file.account("alice") == "hpc-alice"
    with pytest.raises(AccountError, match="no account on s yet"):
        by_file.account("bob")
    mapping.write_text('{"alice": "hpc-alice", "bob": "hpc-bob", "eve": "x y"}\n')
    assert by_file.account("bob") == "hpc-bob"
    with pytest.raises(AccountError, match="cannot be used by hpcgate"):
        by_file.account("eve")
    mapping.unlink()
    with pytest.raises(AccountError, match="cannot look up your account on s right now"):
        by_file.account("alice")
