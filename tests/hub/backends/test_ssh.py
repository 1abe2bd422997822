"""The ssh backend against a real sshd on loopback, with a stand-in lab (see harness/sshd.py)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import urllib.request
from pathlib import Path

import pytest

from harness.sshd import USERS
from hpcgate.catalog import Catalog, CatalogModel, UserInfo
from hpcgate.hub.backends.base import BackendContext, JobSpec, JobState, StatusUnavailable, SubmitError
from hpcgate.hub.backends.ssh import SSHBackend
from hpcgate.remote import SSHPool


def make_backend(sshd, tmp_path, **overrides) -> tuple[SSHBackend, Catalog]:
    data = {
        "systems": {"login": sshd.system_data(**overrides)},
        "groups": {"all": {"all_users": True, "grants": [{"system": "login"}]}},
    }
    catalog = Catalog(CatalogModel.model_validate(data))
    backend = SSHBackend("login", catalog.systems["login"], BackendContext(state_dir=str(tmp_path)), pool=SSHPool())
    return backend, catalog


def spec_for(catalog, account, server_name="", **env) -> JobSpec:
    request = catalog.validate(UserInfo(account), {})
    return JobSpec(
        request=request,
        hub_user=account,
        account=account,
        server_name=server_name,
        env={"JUPYTERHUB_API_TOKEN": "tok-" + os.urandom(6).hex(), "PATH": "/hub/only", **env},
        command=list(request.system_config.singleuser_command) + ["--arg", "it's"],
        workdir=request.system_config.workdir,
    )


def fetch(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return json.loads(r.read())


async def wait_address(backend, handle, timeout=20.0):
    for _ in range(int(timeout / 0.2)):
        found = await backend.read_connection_file(handle)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no connection file; log:\n{await backend.log_tail(handle)}")


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies waiting for init count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def cmdlines_of(user: str) -> list[bytes]:
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
    return found


async def test_start_status_connection_file_log_and_stop(sshd, tmp_path):
    backend, catalog = make_backend(sshd, tmp_path, ssh={"connection_file": True})
    seen_pids = {}
    try:
        handles = [await backend.submit(spec_for(catalog, user)) for user in USERS]
        for user, handle in zip(USERS, handles, strict=True):
            assert handle.host == "127.0.0.1" and handle.job_id == f"{handle.extra['pid']}@127.0.0.1"
            host, port = await wait_address(backend, handle)
            assert host == "127.0.0.1"
            seen = fetch(port)
            # runs as the user's account, detached, with the secret from stdin
            assert seen["uid"] == int(os.popen(f"id -u {user}").read())
            assert seen["pid"] == handle.extra["pid"]
            assert seen["token"] is True
            assert seen["argv"] == ["--arg", "it's"]
            assert seen["cwd"] == f"/home/{user}"
            home = Path(f"/home/{user}/.hpcgate")
            # the environment file with the token is gone; the connection file was removed once read
            assert list((home / "run").iterdir()) == []
            # one log per hub user and server (here the hub user is the account's name)
            assert oct((home / "logs" / f"{user}-default.log").stat().st_mode & 0o777) == "0o600"
            assert oct(home.stat().st_mode & 0o777) == "0o700"
            # the token never appeared on a command line
            assert not any(b"tok-" in c for c in cmdlines_of(user))
            seen_pids[user] = (seen["pid"], seen["kernel"])

        statuses = await backend.status(handles)
        assert {s.state for s in statuses.values()} == {JobState.RUNNING}
        assert "fake lab on 127.0.0.1" in await backend.log_tail(handles[0])

        await backend.cancel(handles[0])
        statuses = await backend.status(handles)
        assert handles[0].job_id not in statuses
        assert statuses[handles[1].job_id].state is JobState.RUNNING
        # nothing of the first user's server is left: not the lab, not its "kernel"
        assert not any(map(running, seen_pids[USERS[0]]))
        assert all(map(running, seen_pids[USERS[1]]))
        await backend.cancel(handles[0])  # cancelling an ended server is no error
        await backend.cancel(handles[1])
        assert not any(map(running, seen_pids[USERS[1]]))
    finally:
        await backend.close()


async def test_one_status_query_per_host(sshd, tmp_path):
    backend, catalog = make_backend(sshd, tmp_path)
    calls = []
    real_run = backend.remote.run

    async def counting_run(host, account, argv, **kw):
        calls.append(argv[0] if argv[0] != "env" else argv[2])
        return await real_run(host, account, argv, **kw)

    backend.remote.run = counting_run
    try:
        handles = [await backend.submit(spec_for(catalog, USERS[i % 2], server_name=f"s{i}")) for i in range(4)]
        calls.clear()
        statuses = await backend.status(handles)
        assert calls == ["ps"]
        assert len(statuses) == 4
        for h in handles:
            await backend.cancel(h)
    finally:
        backend.remote.run = real_run
        await backend.close()


async def test_unreachable_hosts_are_skipped_and_named(sshd, tmp_path):
    # 127.0.0.3 is loopback too, but nothing listens on sshd's port there
    backend, catalog = make_backend(sshd, tmp_path, hosts=["127.0.0.3", "127.0.0.1"])
    try:
        first = await backend.submit(spec_for(catalog, USERS[0]))
        second = await backend.submit(spec_for(catalog, USERS[0], server_name="two"))
        assert first.host == second.host == "127.0.0.1"
        for h in (first, second):
            await backend.cancel(h)
    finally:
        await backend.close()

    backend, catalog = make_backend(sshd, tmp_path, hosts=["127.0.0.3"])
    try:
        with pytest.raises(SubmitError, match=rf"cannot reach 127\.0\.0\.3:{sshd.port}: connection refused"):
            await backend.submit(spec_for(catalog, USERS[0]))
        handle = type(first)(job_id="1@127.0.0.3", host="127.0.0.3", extra=dict(first.extra))
        with pytest.raises(StatusUnavailable, match=r"127\.0\.0\.3"):
            await backend.status([handle])
    finally:
        await backend.close()


async def test_a_failing_server_leaves_its_log(sshd, tmp_path):
    backend, catalog = make_backend(
        sshd, tmp_path, singleuser_command=["sh", "-c", "echo broken-lab-output >&2; exit 3"]
    )
    try:
        handle = await backend.submit(spec_for(catalog, USERS[1], server_name="broken"))
        for _ in range(50):
            if handle.job_id not in await backend.status([handle]):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the failing server did not end")
        assert "broken-lab-output" in await backend.log_tail(handle)
    finally:
        await backend.close()
