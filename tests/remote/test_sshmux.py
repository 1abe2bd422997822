"""hpcgate.hub.sshmux against the real OpenSSH client and sshd: a socket the caller
accepted is carried by the ControlMaster; refusals and a host that is down are sentences."""

from __future__ import annotations

import asyncio
import socket

import pytest

from harness.sshd import TUNNEL_USER
from hpcgate.net import free_port
from hpcgate.remote import sshmux
from hpcgate.remote.pool import SSHTarget


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
    with pytest.raises(sshmux.MuxError, match=rf"cannot reach 127\.0\.0\.1:{down}: .*[Cc]onnection refused"):
        await sshmux.ControlMaster(target(sshd, down), tmp_path, "d").start()


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
    finally:
        await master.stop()
        here.close()
