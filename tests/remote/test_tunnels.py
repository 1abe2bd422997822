"""TunnelManager against a real sshd on loopback: forwards, hub API forward, reconnects."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from harness.sshd import TUNNEL_USER, USERS
from hpcgate.catalog import System
from hpcgate.hub.backends.base import BackendContext
from hpcgate.hub.backends.ssh import SSHBackend
from hpcgate.net import free_port
from hpcgate.remote import SSHPool
from hpcgate.remote.tunnels import TunnelError, TunnelManager
from tests.remote.halfclose import HALF_CLOSES, check_half_close


async def http_get(port: int, path: str = "/", timeout: float = 10) -> bytes:
    """GET through a local port with a fresh TCP connection; returns the body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head[:200]
    return body


def manager_for(tmp_path) -> TunnelManager:
    return TunnelManager(state_dir=str(tmp_path), reconnect_min_delay=0.2, reconnect_max_delay=1.0, reconnect_wait=15)


async def test_forward_survives_a_jump_host_restart_on_the_same_port(sshd, lab, tmp_path):
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    try:
        local = await manager.open_forward("login", system, "ann/", *lab, timeout=10)
        assert json.loads(await http_get(local))["user"] == USERS[0]
        tunnel = manager.get("login")
        assert tunnel.connects == 1 and manager.healthy("login", "ann/")

        sshd.kill()
        for _ in range(100):
            if not tunnel.connected:
                break
            await asyncio.sleep(0.05)
        assert not manager.healthy("login", "ann/")
        # while the jump host is down the local port stays ours; a client waits for it
        pending = asyncio.ensure_future(http_get(local, timeout=20))
        await asyncio.sleep(1.0)
        sshd.start()
        assert json.loads(await pending)["user"] == USERS[0]
        assert json.loads(await http_get(local))["user"] == USERS[0]
        assert tunnel.connects == 2 and manager.healthy("login", "ann/")
    finally:
        await manager.close()


@pytest.mark.parametrize("how", [p for p in HALF_CLOSES if not p.marks])
async def test_a_half_close_crosses_a_forward(sshd, tmp_path, how):
    """Through the hub's port: a client that shuts down writing still gets the app's
    answer; an app that does so is seen as EOF by the client at once (the channel
    handed to the master, as every client is)."""
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    try:

        async def open_client(host: str, port: int):
            local = await manager.open_forward("login", system, f"half/{host}:{port}", host, port, timeout=10)
            return await asyncio.open_connection("127.0.0.1", local)

        await check_half_close(open_client, how)
    finally:
        await manager.close()


async def test_many_forwards_share_one_connection(sshd, lab, tmp_path):
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    try:
        ports = [await manager.open_forward("login", system, f"u{i}/", *lab, timeout=10) for i in range(20)]
        assert len(set(ports)) == 20
        bodies = await asyncio.gather(*(http_get(p) for p in ports))
        assert all(json.loads(b)["user"] == USERS[0] for b in bodies)
        assert manager.get("login").connects == 1
        # the same key and destination keep their port; closing frees it
        assert await manager.open_forward("login", system, "u0/", *lab, timeout=10) == ports[0]
        await manager.close_forward("login", "u0/")
        with pytest.raises(OSError):
            await http_get(ports[0], timeout=2)
    finally:
        await manager.close()


async def test_a_catalog_change_rebuilds_the_tunnel_and_keeps_its_forwards(sshd, lab, tmp_path):
    before = System.model_validate(sshd.system_data())
    # the reloaded catalog logs the tunnel in as another account
    after = System.model_validate(sshd.system_data(ssh={"tunnel_account": "root", "tunnel_key": str(sshd.keys["root"])}))
    manager = manager_for(tmp_path)
    try:
        local = await manager.open_forward("login", before, "ann/", *lab, timeout=10)
        tunnel = manager.get("login")
        assert tunnel.target.username == TUNNEL_USER and tunnel.connects == 1

        manager.update("login", after)
        assert tunnel.system is after and tunnel.target.username == "root"
        await tunnel.wait_connected(20, fresh_try=False)
        # the same forward, on the same local port, now over the new login
        assert json.loads(await http_get(local))["user"] == USERS[0]
        assert tunnel.connects == 2 and manager.healthy("login", "ann/")
        # a new server of the changed system uses the same (rebuilt) tunnel
        assert await manager.open_forward("login", after, "ben/", *lab, timeout=10) != local
        assert manager.get("login") is tunnel and tunnel.connects == 2

        # a definition that can carry no tunnel leaves the tunnel as it was
        broken = System.model_validate(sshd.system_data(ssh={"tunnel_account": None, "tunnel_key": None}))
        manager.update("login", broken)
        assert tunnel.system is after and manager.healthy("login", "ann/")
        with pytest.raises(TunnelError, match="tunnel_account and tunnel_key"):
            manager.tunnel("login", broken)
    finally:
        await manager.close()


async def test_restore_after_hub_restart_uses_the_stored_port(sshd, lab, tmp_path):
    system = System.model_validate(sshd.system_data())
    first = manager_for(tmp_path)
    local = await first.open_forward("login", system, "ann/", *lab, timeout=10)
    await first.close()
    # a new hub process: same state, forward re-created on the port JupyterHub routes to
    second = manager_for(tmp_path)
    try:
        assert await second.restore_forward("login", system, "ann/", *lab, local) == local
        assert json.loads(await http_get(local))["user"] == USERS[0]
    finally:
        await second.close()


async def test_a_forward_that_cannot_open_fails_with_a_sentence(sshd, tmp_path):
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    closed = free_port()
    try:
        with pytest.raises(TunnelError, match=rf"Cannot open a tunnel through 127\.0\.0\.1 to 127\.0\.0\.1:{closed} within 2 s"):
            await manager.open_forward("login", system, "x/", "127.0.0.1", closed, timeout=2)
        assert not manager.has_forward("login", "x/")
    finally:
        await manager.close()

    down = System.model_validate(sshd.system_data(ssh={"port": closed}))
    manager = manager_for(tmp_path)
    try:
        with pytest.raises(TunnelError, match=rf"cannot reach 127\.0\.0\.1:{closed}: connection refused"):
            await manager.hub_api_url("down", down, "http://127.0.0.1:8081/hub/api")
    finally:
        await manager.close()


async def test_hub_api_forward_reaches_the_hub_and_survives_reconnects(sshd, tmp_path):
    async def hub(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhub-ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hub, "127.0.0.1", 0)
    hub_port = server.sockets[0].getsockname()[1]
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    pool = SSHPool()
    backend = SSHBackend("login", system, BackendContext(state_dir=str(tmp_path)), pool=pool)
    fetch = ["/usr/bin/python3", "-c", "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"]
    try:
        url = await manager.hub_api_url("login", system, f"http://127.0.0.1:{hub_port}/hub/api")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/hub/api")
        assert url != f"http://127.0.0.1:{hub_port}/hub/api"
        result = await backend.remote.run("127.0.0.1", USERS[1], [*fetch, url], check=True)
        assert result.stdout.strip() == "hub-ok"

        sshd.kill()
        await asyncio.sleep(0.5)
        sshd.start()
        tunnel = manager.get("login")
        await tunnel.wait_connected(20, fresh_try=False)
        # the same jump-host port again: running jobs keep their JUPYTERHUB_API_URL
        assert await manager.hub_api_url("login", system, f"http://127.0.0.1:{hub_port}/hub/api") == url
        result = await backend.remote.run("127.0.0.1", USERS[1], [*fetch, url], check=True)
        assert result.stdout.strip() == "hub-ok"
        # and across a hub restart, through the state directory
        await manager.close()
        manager = manager_for(tmp_path)
        assert await manager.hub_api_url("login", system, f"http://127.0.0.1:{hub_port}/hub/api") == url
    finally:
        await manager.close()
        await pool.close()
        server.close()


async def test_a_host_that_answers_again_is_reconnected_without_waiting_out_the_backoff(sshd, lab, tmp_path):
    """The backoff after a failed attempt is long (60 s here); the health check sees
    sshd listen again and reconnects at once, and the first request holds."""
    system = System.model_validate(sshd.system_data())
    manager = TunnelManager(
        state_dir=str(tmp_path), reconnect_min_delay=60, reconnect_max_delay=60, reconnect_wait=50,
        health_check_interval=0.2,
    )
    try:
        local = await manager.open_forward("login", system, "ann/", *lab, timeout=10)
        tunnel = manager.get("login")
        sshd.kill()
        for _ in range(200):
            if tunnel.attempts >= 2:  # the first reconnect attempt failed: a 60 s backoff began
                break
            await asyncio.sleep(0.05)
        assert tunnel.attempts >= 2 and not tunnel.connected
        sshd.start()
        # answered well before the backoff would have let the supervisor try again
        assert json.loads(await http_get(local, timeout=40))["user"] == USERS[0]
        assert tunnel.connects == 2
    finally:
        await manager.close()


async def test_a_refused_hub_api_forward_is_asked_for_again_on_its_known_port(sshd, tmp_path):
    """After a hub crash the jump host may hold the forward's port for a while (for the
    dead hub's connection): the restored tunnel keeps asking for that same port, the one
    running jobs know, and gets it once it is free."""
    port = free_port()
    (tmp_path / "tunnels.json").write_text(json.dumps({"login": port}))
    # held on every address, IPv4 and IPv6 (sshd binds "localhost" on both)
    holder = socket.socket(socket.AF_INET6)
    holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    holder.bind(("::", port))
    holder.listen()
    system = System.model_validate(sshd.system_data())
    manager = TunnelManager(state_dir=str(tmp_path), remote_forward_retries=1, remote_forward_retry_interval=0.2)
    try:
        with pytest.raises(TunnelError, match=f"refused the hub API forward on .*:{port}"):
            await manager.restore_hub_api("login", system, "http://127.0.0.1:8081/hub/api", timeout=10)
        assert not manager.hub_api_up("login")
        holder.close()
        for _ in range(100):
            if manager.hub_api_up("login"):
                break
            await asyncio.sleep(0.1)
        assert manager.hub_api_up("login")
        assert await manager.restore_hub_api("login", system, "http://127.0.0.1:8081/hub/api", timeout=10) == (
            f"http://127.0.0.1:{port}/hub/api"
        )
    finally:
        holder.close()
        await manager.close()


def process_ended(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def test_the_master_is_one_child_process_with_no_secret_in_argv_and_close_ends_it(sshd, lab, tmp_path):
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    try:
        ports = [await manager.open_forward("login", system, f"u{i}/", *lab, timeout=10) for i in range(3)]
        for port in ports:
            assert json.loads(await http_get(port))["user"] == USERS[0]
        pid = manager.get("login").master_pid
        assert pid is not None and Path(f"/proc/{pid}/stat").read_text().split()[3] == str(os.getpid())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0] == b"ssh" and b"-M" in argv
        key = sshd.keys[TUNNEL_USER]
        assert str(key).encode() in argv  # the key file's path, never its contents
        secret = [line for line in key.read_text().splitlines() if line and "PRIVATE KEY" not in line]
        assert secret and not any(part.encode() in b" ".join(argv) for part in secret)
    finally:
        await manager.close()
    assert process_ended(pid)
    with pytest.raises(OSError):
        await http_get(ports[0], timeout=2)


HUB = r"""
import asyncio, json, os, sys
from hpcgate.catalog import System
from hpcgate.remote.tunnels import TunnelManager
async def main():
    manager = TunnelManager(state_dir=sys.argv[2])
    system = System.model_validate(json.loads(sys.argv[1]))
    port = await manager.open_forward("login", system, "ann/", sys.argv[3], int(sys.argv[4]), timeout=20)
    print(json.dumps({"port": port, "master": manager.get("login").master_pid}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_a_hub_killed_with_sigkill_leaves_no_master_behind(sshd, lab, tmp_path):
    """The master ends with the process that started it, also one that could not clean
    up (SIGKILL): no orphan keeps the connection and the hub API port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HUB, json.dumps(sshd.system_data()), str(tmp_path), lab[0], str(lab[1]),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert json.loads(await http_get(info["port"]))["user"] == USERS[0]
        assert not process_ended(info["master"])
    finally:
        proc.kill()
        await proc.wait()
    for _ in range(100):
        if process_ended(info["master"]):
            break
        await asyncio.sleep(0.05)
    assert process_ended(info["master"])


async def test_connections_past_max_connections_are_closed_and_the_others_carried(sshd, lab, tmp_path):
    """OpenSSH ends a master past 16384 channels: the tunnel refuses connections first."""
    system = System.model_validate(sshd.system_data())
    manager = TunnelManager(state_dir=str(tmp_path), max_connections=2)
    try:
        local = await manager.open_forward("login", system, "ann/", *lab, timeout=10)
        held = [await asyncio.open_connection("127.0.0.1", local) for _ in range(2)]
        for _ in range(100):
            if manager.get("login").clients == 2:
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed at once
        writer.close()
        for _, w in held:
            w.close()
        for _ in range(100):
            if manager.get("login").clients == 0:
                break
            await asyncio.sleep(0.05)
        assert json.loads(await http_get(local))["user"] == USERS[0]
        assert manager.get("login").connects == 1  # the master lived through it
    finally:
        await manager.close()


async def test_a_certificate_login_hands_ssh_memory_only_files_it_opens_once(sshd, lab, tmp_path):
    """Mode certificate: the master's key and certificate exist only in memory (memfd),
    named in argv by a /proc path of the hub; the hub closes them once ssh logged in."""
    data = sshd.system_data(ssh={"identity": sshd.certificate_identity(), "tunnel_key": None})
    system = System.model_validate(data)
    manager = manager_for(tmp_path)

    def memfds() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                found.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return [f for f in found if "hpcgate-tunnel" in f]

    try:
        local = await manager.open_forward("login", system, "ann/", *lab, timeout=10)
        assert json.loads(await http_get(local))["user"] == USERS[0]
        argv = Path(f"/proc/{manager.get('login').master_pid}/cmdline").read_bytes().split(b"\0")
        key = argv[argv.index(b"-i") + 1].decode()
        assert key.startswith(f"/proc/{os.getpid()}/fd/")
        assert any(a.startswith(f"CertificateFile=/proc/{os.getpid()}/fd/".encode()) for a in argv)
        assert not any(b"PRIVATE KEY" in a or b"cert-v01" in a for a in argv)
        assert memfds() == []  # closed after the login
    finally:
        await manager.close()
