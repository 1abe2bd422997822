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
import collections
import ctypes
import dataclasses
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from .certs import CAError
from .pool import SSHTarget

MUX_MSG_HELLO = 0x00000001
MUX_C_OPEN_FWD = 0x10000006
MUX_C_CLOSE_FWD = 0x10000007
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_FWD_REMOTE = 2
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_SESSION_OPENED = 0x80000006
MUX_S_REMOTE_PORT = 0x80000007
SSHMUX_VER = 4


class MuxError(OSError):
    """The master could not be started or refused a forward; the message says why.

    ``unreachable``: the host did not answer at all (TCP refused, no route, no answer,
    the connection dropped before the login), as opposed to a host that answered and
    refused (the login, the host key, a channel)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


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


async def _ask(control_path: str, what: str, doing: str, request: bytes, fd: int | None = None) -> tuple[socket.socket, int, bytes]:
    """One request on a fresh control connection: (the connection, the reply's type, its body).

    Sent at once, without waiting for the master's greeting (as OpenSSH's own mux
    client does; the master reads each message by its length): our hello, the request
    and, with ``fd``, that descriptor twice (stdin and stdout of a stdio forward). Then
    the master's hello and its reply are read.
    """
    loop = asyncio.get_running_loop()
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.setblocking(False)
    try:
        await loop.sock_connect(ctl, control_path)
    except OSError as exc:
        ctl.close()
        raise MuxError(f"the SSH master for {what} is not running ({exc})", unreachable=True) from exc
    except BaseException:
        ctl.close()
        raise
    try:
        await loop.sock_sendall(ctl, _packet(struct.pack(">II", MUX_MSG_HELLO, SSHMUX_VER)) + _packet(request))
        fds = [fd] if fd is not None else []
        for _ in range(2 if fds else 0):
            while True:
                try:
                    socket.send_fds(ctl, [b"\0"], fds)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        kind, _ = await _read_packet(ctl)
        if kind != MUX_MSG_HELLO:
            ctl.close()
            raise MuxError(f"the SSH master for {what} did not greet as OpenSSH's does")
        kind, body = await _read_packet(ctl)
    except (OSError, EOFError) as exc:
        ctl.close()
        if isinstance(exc, MuxError):
            raise
        raise MuxError(f"the SSH master for {what} ended while asked to {doing}", unreachable=True) from exc
    except BaseException:
        ctl.close()  # cancelled: the master drops the request with the connection
        raise
    return ctl, kind, body


def _forward_request(kind: int, bind: str, port: int, host: str, dest_port: int) -> bytes:
    # the master reads an empty listen address as "none given" (sshd then binds
    # localhost); "*" is what asks sshd for every address, as an empty one does in SSH
    listen = (bind or "*").encode()
    return (
        struct.pack(">III", kind, 1, MUX_FWD_REMOTE)
        + _string(listen) + struct.pack(">I", port)
        + _string(host.encode()) + struct.pack(">I", dest_port)
    )


async def _forward_exchange(control_path: str, kind: int, args: tuple[str, int, str, int], what: str, doing: str) -> tuple[int, bytes]:
    """Send one remote-forward request (open or close); the master's reply (type, body)."""
    ctl, reply, body = await _ask(control_path, what, f"{doing} a remote forward", _forward_request(kind, *args))
    ctl.close()
    return reply, body


async def remote_forward(control_path: str, bind: str, port: int, host: str, dest_port: int, where: str = "") -> int:
    """Ask the master for a remote forward ``bind:port`` (on the server) -> ``host:dest_port``
    (on this side), as ``ssh -O forward -R`` does; returns the listening port (``port``
    0 lets the server pick; ``bind`` empty: every address of the server). The forward
    belongs to the master: it lasts as long as the master's connection. A refusal
    (port taken) raises :class:`MuxError`."""
    what = where or control_path
    kind, body = await _forward_exchange(control_path, MUX_C_OPEN_FWD, (bind, port, host, dest_port), what, "open")
    if kind == MUX_S_REMOTE_PORT:
        return struct.unpack(">I", body[4:8])[0]
    if kind == MUX_S_OK:
        return port
    raise MuxError(f"{what} refused the remote forward {bind or '*'}:{port}: {_reason(body)}")


async def cancel_remote_forward(
    control_path: str, bind: str, port: int, host: str, dest_port: int, where: str = ""
) -> None:
    """Cancel a remote forward opened by :func:`remote_forward` with the same arguments
    (as ``ssh -O cancel -R``); :class:`MuxError` if the master refuses."""
    what = where or control_path
    kind, body = await _forward_exchange(control_path, MUX_C_CLOSE_FWD, (bind, port, host, dest_port), what, "cancel")
    if kind != MUX_S_OK:
        raise MuxError(f"{what} did not cancel the remote forward {bind or '*'}:{port}: {_reason(body)}")


async def stdio_forward(control_path: str, client: socket.socket, host: str, port: int, where: str = "") -> socket.socket:
    """Hand ``client`` to the master at ``control_path`` as a channel to ``host:port``.

    Returns once the remote side accepted the channel (the master replies only after
    the server's channel-open confirmation), with the open control connection: keep it
    open while the channel lives; it reaches EOF when the master closes the channel.
    ``client`` may be closed by the caller afterwards (the master holds its own copy).

    Half-close: a ``shutdown(SHUT_WR)`` of the client reaches ``host:port`` as EOF and
    its answer still comes back. The master opens the channel with OpenSSH's "force
    drain" (as for ``ssh -W``): an EOF from ``host:port`` ends the whole channel, so the
    client sees EOF at once but cannot send any more (its socket is closed under it).
    ``ssh -L`` keeps that way open; only a channel the master accepts itself does, which
    would need the hub to relay every byte (``make bench ARGS=halfclose``).
    """
    what = where or control_path
    request = struct.pack(">II", MUX_C_NEW_STDIO_FWD, 1) + _string(b"") + _string(host.encode()) + struct.pack(">I", port)
    ctl, kind, body = await _ask(control_path, what, "open a channel", request, client.fileno())
    if kind != MUX_S_SESSION_OPENED:
        ctl.close()
        raise MuxError(f"{what} refused a channel to {host}:{port}: {_reason(body)}")
    return ctl


async def probe(control_path: str, host: str, port: int, where: str = "") -> None:
    """Whether ``host:port`` accepts a channel through the master: returns if it did,
    :class:`MuxError` with the reason if not. The channel is closed at once."""
    ours, theirs = socket.socketpair()
    try:
        ctl = await stdio_forward(control_path, theirs, host, port, where)
    finally:
        theirs.close()
        ours.close()
    ctl.close()


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


def login_error(target: SSHTarget, lines: list[str], timeout: float) -> MuxError:
    """ssh's last words about a failed start, as a sentence naming the host (worded as
    :func:`hpcgate.remote.pool.connect` words asyncssh's errors)."""
    text = next((line for line in reversed(lines) if line and not line.startswith("Warning:")), "")
    tcp = re.search(r"connect to host \S+ port \d+: (.+?)\.?$", text)
    if tcp:
        return MuxError(f"cannot reach {target.where}: {tcp.group(1)[:1].lower()}{tcp.group(1)[1:]}", unreachable=True)
    if any("UNPROTECTED PRIVATE KEY FILE" in line for line in lines):
        return MuxError(
            f"cannot use the SSH key {target.key_path} for {target.username}@{target.host}: OpenSSH refuses a key "
            "file of its own user that others may read (make it mode 0600)"
        )
    if "Permission denied" in text:
        return MuxError(
            f"{target.where} refused the login of {target.username}: permission denied (the key was not accepted)"
        )
    if "Host key verification failed" in text or "HOST IDENTIFICATION HAS CHANGED" in " ".join(lines):
        return MuxError(f"cannot reach {target.where}: its host key is not the one in known_hosts")
    if not text:
        return MuxError(f"cannot reach {target.where}: no answer within {timeout:.0f} s", unreachable=True)
    # the connection dropped during the handshake (a host going down or coming up)
    dropped = re.search(r"kex_exchange_identification|Connection (closed|reset|timed out)|timed out", text)
    reason = text.removeprefix("ssh: ").rstrip(".")
    return MuxError(f"cannot reach {target.where}: {reason[:1].lower()}{reason[1:]}", unreachable=bool(dropped))


_PR_SET_PDEATHSIG = 1


def with_parent_death(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` made to get SIGTERM when the process that starts it ends, even by
    SIGKILL (Linux's parent death signal): a hub that crashed leaves no master holding
    its connection and its hub API port. Through util-linux's ``setpriv --pdeathsig``
    (which then execs ``argv``, keeping the PID); where that is missing, a
    ``preexec_fn`` that calls prctl itself (returned as the second item). The signal is
    armed before ``argv`` runs; only a parent killed in the few milliseconds between the
    fork and that moment would leave it running."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--", *argv], None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before prctl took effect
            os._exit(1)

    return argv, preexec


class ControlMaster:
    """One ``ssh -M`` process for a target; started and stopped by PID.

    The master ends with the process that started it (:func:`with_parent_death`; the
    signal follows the thread that started it: start it from the thread that runs the
    event loop, which lives as long as the process).
    Its stderr is read all along (a full pipe would stop it); each line goes to
    ``on_line`` and the last few make the error of a failed start.
    """

    def __init__(
        self,
        target: SSHTarget,
        directory: str | Path,
        name: str,
        cipher: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ):
        self.target = target
        self.control_path = str(Path(directory) / f"mux-{name}.sock")
        self.cipher = cipher
        self.on_line = on_line
        self.proc: asyncio.subprocess.Process | None = None
        self.last_lines: collections.deque[str] = collections.deque(maxlen=8)
        self._reader: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.last_lines.append(line)
            if self.on_line is not None and line:
                self.on_line(line)

    async def start(self, timeout: float | None = None) -> None:
        """Start the master; returns when its control socket accepts (ssh creates it
        after the login), or raises MuxError with ssh's own reason worded as a
        sentence (:func:`login_error`)."""
        timeout = timeout or self.target.connect_timeout + 5
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        if shutil.which("ssh") is None:
            raise MuxError(f"cannot open the connection to {self.target.where}: OpenSSH's client (ssh) is not installed here")
        held: list[int] = []
        try:
            argv, preexec = with_parent_death(master_argv(self._login(held), self.control_path, self.cipher))
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec
                )
            except OSError as exc:
                raise MuxError(
                    f"cannot start OpenSSH's client for the connection to {self.target.where} "
                    f"({argv[0]}): {exc.strerror or exc}"
                ) from exc
            await self._started(timeout)
        finally:
            # ssh has read the certificate's key by now (it logs in before it listens)
            for fd in held:
                os.close(fd)

    def _login(self, held: list[int]) -> SSHTarget:
        """The target as ssh gets it: key files as they are; for a certificate login, a
        fresh key and certificate in memory-only files (memfd, mode 0600) that ssh
        opens as ``/proc/<hub pid>/fd/<n>``: nothing written to disk, nothing secret in
        argv. Their descriptors go to ``held`` (closed once ssh has logged in)."""
        target = self.target
        if target.certificate is None:
            try:
                with open(target.key_path, "rb"):
                    pass
            except OSError as exc:
                why = exc.strerror or str(exc)
                raise MuxError(
                    f"cannot use the SSH key {target.key_path} for {target.username}@{target.host}: "
                    f"{why[:1].lower()}{why[1:]}"
                ) from exc
            return target
        try:
            key, cert = target.certificate.credentials(target.username)
        except CAError as exc:
            raise MuxError(f"cannot sign a certificate for {target.username}@{target.host}: {exc}") from exc
        paths = []
        for what, data in (("key", key.export_private_key()), ("certificate", cert.export_certificate())):
            fd = os.memfd_create(f"hpcgate-tunnel-{what}", os.MFD_CLOEXEC)
            held.append(fd)
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            paths.append(f"/proc/{os.getpid()}/fd/{fd}")
        return dataclasses.replace(target, key_path=paths[0], cert_path=paths[1], certificate=None)

    async def _started(self, timeout: float) -> None:
        """Wait for the control socket (ssh's login done) or ssh's end (MuxError)."""
        assert self.proc is not None
        self._reader = asyncio.ensure_future(self._read_stderr())
        try:
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
        except BaseException:
            # cancelled while starting: no master may outlive this call's caller
            self.proc.kill()
            raise
        if self.proc.returncode is not None:
            try:
                await asyncio.wait_for(self._reader, 2)
            except TimeoutError:
                pass
        await self.stop()
        raise login_error(self.target, list(self.last_lines), timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    def terminate(self) -> None:
        """Ask the master to end (its connection with it); :meth:`stop` waits for it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
