"""hpcgate.hub.sshmux against the real OpenSSH client and sshd: a socket the caller
accepted is carried by the ControlMaster; refusals and a host that is down are sentences."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.sshd import TUNNEL_USER
from hpcgate.net import free_port
from hpcgate.remote import sshmux
from hpcgate.remote.pool import SSHTarget
from tests.remote.halfclose import HALF_CLOSES, check_half_close
from tests.remote.test_tunnels import process_ended


def target(sshd, port: int | None = None) -> SSHTarget:
    return SSHTarget(
        "127.0.0.1", port or sshd.port, TUNNEL_USER, str(sshd.keys[TUNNEL_USER]), known_hosts=str(sshd.known_hosts)
    )


async def test_a_passed_socket_reaches_the_destination_through_the_master(sshd, lab, tmp_path):
    master = sshmux.ControlMaster(target(sshd), tmp_path, "t")
    await master.start()
    try:
        ours, theirs = socket.socketpair()
        ctl = await sshmux.stdio_forward(master.control_path, theirs, *lab)
        theirs.close()  # the master holds its own copy
        held = asyncio.ensure_future(sshmux.hold(ctl))
        reader, writer = await asyncio.open_connection(sock=ours)
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        assert data.startswith(b"HTTP/1.0 200") and b'"uid"' in data
        writer.close()
        await asyncio.wait_for(held, 10)  # the channel ended: the master closed the control connection
    finally:
        await master.stop()
    assert not master.running


async def test_a_refused_destination_is_a_sentence_naming_the_host(sshd, tmp_path):
    master = sshmux.ControlMaster(target(sshd), tmp_path, "r")
    await master.start()
    try:
        _, theirs = socket.socketpair()
        closed = free_port()
        with pytest.raises(sshmux.MuxError, match=rf"127\.0\.0\.1:{sshd.port} refused a channel to 127\.0\.0\.1:{closed}"):
            await sshmux.stdio_forward(master.control_path, theirs, "127.0.0.1", closed, where=target(sshd).where)
    finally:
        await master.stop()


async def test_a_host_that_is_down_is_named_with_the_cause(sshd, tmp_path):
    down = free_port()
    with pytest.raises(sshmux.MuxError, match=rf"^cannot reach 127\.0\.0\.1:{down}: connection refused$") as info:
        await sshmux.ControlMaster(target(sshd, down), tmp_path, "d").start()
    assert info.value.unreachable  # the tunnel watches such a host for its return


async def test_a_refused_login_is_a_sentence_and_not_an_unreachable_host(sshd, tmp_path):
    wrong = SSHTarget("127.0.0.1", sshd.port, TUNNEL_USER, str(sshd.keys["root"]), known_hosts=str(sshd.known_hosts))
    master = sshmux.ControlMaster(wrong, tmp_path, "w")
    with pytest.raises(sshmux.MuxError, match=rf"^127\.0\.0\.1:{sshd.port} refused the login of {TUNNEL_USER}: permission denied"):
        await master.start()
    assert not master.running
    loose = tmp_path / "loose_key"
    loose.write_bytes(sshd.keys[TUNNEL_USER].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(sshmux.MuxError, match=r"cannot use the SSH key .*loose_key for .*make it mode 0600"):
        await sshmux.ControlMaster(SSHTarget("127.0.0.1", sshd.port, TUNNEL_USER, str(loose)), tmp_path, "l").start()
    missing = SSHTarget("127.0.0.1", sshd.port, TUNNEL_USER, str(tmp_path / "nokey"))
    with pytest.raises(sshmux.MuxError, match=r"cannot use the SSH key .*nokey for .*: no such file or directory"):
        await sshmux.ControlMaster(missing, tmp_path, "m").start()


async def test_a_remote_forward_reaches_this_side_and_a_taken_port_is_refused(sshd, tmp_path):
    """The hub API forward's mechanism: the jump host's port leads back to a listener here."""
    got = asyncio.Queue()

    async def answer(reader, writer):
        await got.put(await reader.readline())
        writer.close()

    here = await asyncio.start_server(answer, "127.0.0.1", 0)
    here_port = here.sockets[0].getsockname()[1]
    master = sshmux.ControlMaster(target(sshd), tmp_path, "f")
    await master.start()
    try:
        port = await sshmux.remote_forward(master.control_path, "127.0.0.1", 0, "127.0.0.1", here_port)
        assert port > 0
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # the "jump host" is this machine
        writer.write(b"hello through the jump host\n")
        await writer.drain()
        assert await asyncio.wait_for(got.get(), 10) == b"hello through the jump host\n"
        writer.close()
        with pytest.raises(sshmux.MuxError, match="refused the remote forward"):
            await sshmux.remote_forward(master.control_path, "127.0.0.1", port, "127.0.0.1", here_port, where="jump")
        assert master.running  # a refused forward does not end the connection
        # cancelled, the port is free on the server: the same request gets it again
        await sshmux.cancel_remote_forward(master.control_path, "127.0.0.1", 0, "127.0.0.1", here_port)
        # the master answers before sshd has closed the port (a global request in flight)
        for _ in range(100):
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                break
            probe.close()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"port {port} still listens after the forward was cancelled")
        assert await sshmux.remote_forward(master.control_path, "127.0.0.1", port, "127.0.0.1", here_port) == port
    finally:
        await master.stop()
        here.close()


PARENT = r"""
import shutil, subprocess, sys, time
from hpcgate.remote import sshmux
if sys.argv[1] == "preexec":
    shutil.which = lambda name: None  # as on a host without util-linux's setpriv
argv, preexec = sshmux.with_parent_death(["sleep", "60"])
child = subprocess.Popen(argv, preexec_fn=preexec)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("way", ["setpriv", "preexec"])
def test_a_master_started_so_ends_when_its_parent_is_killed(way):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, way], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        # the signal is armed before the exec (setpriv and preexec_fn alike): wait for it
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_ended(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while not process_ended(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_ended(child)


async def test_a_hub_host_without_openssh_is_told_so(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on it
    with pytest.raises(sshmux.MuxError, match=r"OpenSSH's client \(ssh\) is not installed"):
        await sshmux.ControlMaster(target(sshd), tmp_path, "n").start()



@pytest.mark.parametrize("how", HALF_CLOSES)
async def test_a_half_close_crosses_the_master(sshd, tmp_path, how):
    """A side that shuts down only its write direction: the other side sees EOF at once
    and, as through ``ssh -L``, the way back stays open (see APP_HALF_CLOSE_GAP for the
    one way that does not)."""
    master = sshmux.ControlMaster(target(sshd), tmp_path, "h")
    await master.start()
    held: list[asyncio.Future] = []
    try:

        async def open_client(host: str, port: int):
            ours, theirs = socket.socketpair()
            ctl = await sshmux.stdio_forward(master.control_path, theirs, host, port)
            theirs.close()
            held.append(asyncio.ensure_future(sshmux.hold(ctl)))
            return await asyncio.open_connection(sock=ours)

        await check_half_close(open_client, how)
    finally:
        await master.stop()
        await asyncio.gather(*held)  # the master's end closed every control connection
