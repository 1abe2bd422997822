"""OpenSSH's ControlMaster as a tunnel's data path: the hub keeps its listening sockets
and hands each accepted client connection to the master, which copies the bytes itself.

Why: a forward through asyncssh copies and encrypts every byte in Python, inside the
hub's event loop (about 0.6-0.7x of ``ssh -L`` with the same cipher on this machine
kind, see ``make bench ARGS=tunnels``). OpenSSH's multiplexing protocol (PROTOCOL.mux
in OpenSSH's sources) lets a client pass file descriptors to a running master with
``MUX_C_NEW_STDIO_FWD``: the master opens a ``direct-tcpip`` channel to ``host:port``
and reads and writes the passed socket directly, exactly as ``ssh -L`` does. The hub
then only accepts connections and passes them on; it never sees the data.

:class:`ControlMaster` starts ``ssh -M -N -S <control path>`` for one
:class:`~hpcgate.remote.pool.SSHTarget` (one connection per system, as before);
:func:`stdio_forward` hands one connected socket to it. The control connection that
:func:`stdio_forward` returns stays open for as long as the channel lives: the master
closes it when the channel ends, and closing it ends the channel.

Contract: failures raise :class:`MuxError` with a sentence naming the host (or the
control socket) and the cause; the master never gets a secret in its argv (only key
file paths).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
from pathlib import Path

from .pool import SSHTarget

MUX_MSG_HELLO = 0x00000001
MUX_C_OPEN_FWD = 0x10000006
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_FWD_REMOTE = 2
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_SESSION_OPENED = 0x80000006
MUX_S_REMOTE_PORT = 0x80000007
SSHMUX_VER = 4


class MuxError(OSError):
    """The master could not be started or refused a forward; the message says why."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _packet(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def _read_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


async def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    (length,) = struct.unpack(">I", await _read_exact(sock, 4))
    payload = await _read_exact(sock, length)
    return struct.unpack(">I", payload[:4])[0], payload[4:]


def _reason(body: bytes) -> str:
    """The text of a MUX_S_FAILURE/PERMISSION_DENIED reply (request id, then a string)."""
    if len(body) < 8:
        return "no reason given"
    (length,) = struct.unpack(">I", body[4:8])
    return body[8 : 8 + length].decode("utf-8", "replace") or "no reason given"


async def _control(control_path: str, what: str) -> socket.socket:
    """A control connection to the master, greeted (hello exchanged)."""
    loop = asyncio.get_running_loop()
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.setblocking(False)
    try:
        await loop.sock_connect(ctl, control_path)
        kind, _ = await _read_packet(ctl)
        if kind != MUX_MSG_HELLO:
            raise MuxError(f"the SSH master for {what} did not greet as OpenSSH's does")
        await loop.sock_sendall(ctl, _packet(struct.pack(">II", MUX_MSG_HELLO, SSHMUX_VER)))
    except (OSError, EOFError) as exc:
        ctl.close()
        if isinstance(exc, MuxError):
            raise
        raise MuxError(f"the SSH master for {what} is not running ({exc or 'it closed the control socket'})") from exc
    return ctl


async def remote_forward(control_path: str, bind: str, port: int, host: str, dest_port: int, where: str = "") -> int:
    """Ask the master for a remote forward ``bind:port`` (on the server) -> ``host:dest_port``
    (on this side), as ``ssh -O forward -R`` does; returns the listening port (``port``
    0 lets the server pick). The forward belongs to the master: it lasts as long as
    the master's connection. A refusal (port taken) raises :class:`MuxError`."""
    what = where or control_path
    ctl = await _control(control_path, what)
    try:
        request = (
            struct.pack(">III", MUX_C_OPEN_FWD, 1, MUX_FWD_REMOTE)
            + _string(bind.encode()) + struct.pack(">I", port)
            + _string(host.encode()) + struct.pack(">I", dest_port)
        )
        await asyncio.get_running_loop().sock_sendall(ctl, _packet(request))
        kind, body = await _read_packet(ctl)
    except (OSError, EOFError) as exc:
        raise MuxError(f"the SSH master for {what} ended while asked for a remote forward") from exc
    finally:
        ctl.close()
    if kind == MUX_S_REMOTE_PORT:
        return struct.unpack(">I", body[4:8])[0]
    if kind == MUX_S_OK:
        return port
    raise MuxError(f"{what} refused the remote forward {bind}:{port}: {_reason(body)}")


async def stdio_forward(control_path: str, client: socket.socket, host: str, port: int, where: str = "") -> socket.socket:
    """Hand ``client`` to the master at ``control_path`` as a channel to ``host:port``.

    Returns once the remote side accepted the channel (the master replies only after
    the server's channel-open confirmation), with the open control connection: keep it
    open while the channel lives; it reaches EOF when the master closes the channel.
    ``client`` may be closed by the caller afterwards (the master holds its own copy).
    """
    loop = asyncio.get_running_loop()
    what = where or control_path
    ctl = await _control(control_path, what)
    try:
        request = struct.pack(">II", MUX_C_NEW_STDIO_FWD, 1) + _string(b"") + _string(host.encode()) + struct.pack(">I", port)
        await loop.sock_sendall(ctl, _packet(request))
        # the master reads stdin's and stdout's descriptors, one byte each: both are the socket
        for _ in range(2):
            while True:
                try:
                    socket.send_fds(ctl, [b"\0"], [client.fileno()])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        kind, body = await _read_packet(ctl)
    except (OSError, EOFError) as exc:
        ctl.close()
        raise MuxError(f"the SSH master for {what} ended while asked for a channel") from exc
    if kind != MUX_S_SESSION_OPENED:
        ctl.close()
        raise MuxError(f"{what} refused a channel to {host}:{port}: {_reason(body)}")
    return ctl


async def hold(ctl: socket.socket) -> None:
    """Wait until the master ends the channel of ``ctl`` (EOF), then close ``ctl``."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(ctl, 4096):
            pass
    except OSError:
        pass
    finally:
        ctl.close()


def master_argv(target: SSHTarget, control_path: str, cipher: str | None = None) -> list[str]:
    """``ssh -M -N`` for ``target``: only what the target says (no user config, no
    agent, no prompts); keepalive from the target; the control socket at ``control_path``."""
    argv = [
        "ssh", "-M", "-N", "-S", control_path, "-F", "/dev/null",
        "-p", str(target.port), "-i", target.key_path,
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", "PreferredAuthentications=publickey",
        "-o", f"ConnectTimeout={max(int(target.connect_timeout), 1)}",
        "-o", f"ServerAliveInterval={max(int(target.keepalive_interval), 1)}",
        "-o", f"ServerAliveCountMax={target.keepalive_count_max}",
        "-o", "ExitOnForwardFailure=yes", "-o", "ControlPersist=no",
    ]
    if target.cert_path:
        argv += ["-o", f"CertificateFile={target.cert_path}"]
    if target.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    if cipher:
        argv += ["-c", cipher]
    return [*argv, "-l", target.username, "--", target.host]


class ControlMaster:
    """One ``ssh -M`` process for a target; started and stopped by PID."""

    def __init__(self, target: SSHTarget, directory: str | Path, name: str, cipher: str | None = None):
        self.target = target
        self.control_path = str(Path(directory) / f"mux-{name}.sock")
        self.cipher = cipher
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float | None = None) -> None:
        """Start the master; returns when its control socket accepts, or raises MuxError
        with ssh's own reason (e.g. ``Connection refused``, ``Permission denied``)."""
        timeout = timeout or self.target.connect_timeout + 5
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        self.proc = await asyncio.create_subprocess_exec(
            *master_argv(self.target, self.control_path, self.cipher),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                break
            if os.path.exists(self.control_path):
                return
            try:
                await asyncio.wait_for(self.proc.wait(), 0.02)
            except TimeoutError:
                pass
        err = b""
        if self.proc.returncode is not None and self.proc.stderr is not None:
            err = await self.proc.stderr.read()
        await self.stop()
        last = err.decode("utf-8", "replace").strip().splitlines()
        raise MuxError(f"cannot reach {self.target.where}: {last[-1] if last else f'no answer within {timeout:.0f} s'}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
