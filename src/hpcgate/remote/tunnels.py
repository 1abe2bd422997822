"""TunnelManager: one supervised SSH connection per system, carrying every forward.

For each catalog system whose servers need a tunnel, the manager keeps one connection
to the system's jump host, logged in as the tunnel account: an OpenSSH client run as a
multiplexing master (``ssh -M -N``, :mod:`hpcgate.remote.sshmux`), a child process of
the hub started and stopped by its PID. On it:

- a local forward per server: ``127.0.0.1:<local port>`` on the hub host, through the
  jump host, to the server's ``node:port``. JupyterHub routes the user's URL to the
  local port.
- at most one remote forward (``hub_api_forward``): a port on the jump host leading to
  the hub API, for jobs that cannot reach the hub otherwise. Jobs get its URL as
  ``JUPYTERHUB_API_URL``.

The data path: the hub owns each forward's listening socket and hands every accepted
client connection to the master (``MUX_C_NEW_STDIO_FWD``, the socket passed with
``SCM_RIGHTS``), which opens a ``direct-tcpip`` channel to ``node:port`` and copies
the bytes itself, in C, as ``ssh -L`` does: the hub's event loop never sees the data
(``make bench ARGS=tunnels`` measures it against ``ssh -L`` with the same cipher).
Unlike ``ssh -L``, the listening sockets stay with the hub: they stay bound while the
connection is re-opened, so a forward keeps its local port through any number of
reconnects and no other process can take the port in between. A client connecting
while the connection is down waits up to ``reconnect_wait`` seconds for it.
A client's half-close (``shutdown(SHUT_WR)``) reaches the server as EOF and the
answer still comes back; a server's half-close ends the connection (OpenSSH's stdio
forwards drain both ways on the server's EOF, see :func:`~hpcgate.remote.sshmux.stdio_forward`).

Supervision: keepalive (the catalog's ``ssh.keepalive_interval``, ssh's
``ServerAliveInterval``) detects a dead peer and ends the master; a lost connection is
re-opened with exponential backoff and jitter; the remote forward is requested again
on the same jump-host port (kept in ``<state_dir>/tunnels.json``, so running servers
keep their hub API address across hub restarts too). While it waits out a backoff, the
supervisor checks every ``health_check_interval`` seconds whether the jump host
accepts TCP connections again; as soon as it does, the backoff is reset and the
connection re-opened. So the time from "sshd listens again" to "every forward carries
traffic" is bounded by one ``health_check_interval`` plus one SSH handshake (and the
remote forward request), not by the backoff.

The master ends with the hub: :meth:`TunnelManager.close` stops it (and waits for its
PID), and a hub that dies without closing (SIGKILL) takes it along (Linux's parent
death signal), so no master outlives the hub holding the hub API port. Its argv holds
the key file's path, never a secret (a ``certificate`` login: a fresh key and
certificate in memory-only files the hub closes once ssh has logged in, see
:class:`~hpcgate.remote.sshmux.ControlMaster`); its control socket lives in a directory
only the hub's user can enter (``control_dir``).

After a hub restart, :meth:`TunnelManager.restore_forward` and
:meth:`TunnelManager.restore_hub_api` re-create every forward from the spawners' state
(the spawner calls them from ``poll()``, before JupyterHub routes the server) and log
each forward restored and each that could not be.

Contract of the public coroutines: they raise :class:`TunnelError` with a sentence that
names the jump host and the cause; nothing else escapes for a connection problem.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..catalog import System
from ..files import write_atomic
from . import sshmux
from .pool import RemoteError, SSHTarget, describe_error
from .targets import SystemRemote


class TunnelError(RuntimeError):
    """A tunnel could not be opened; the message names the jump host and the cause."""


# --- the data path: one accepted client -> one channel of the master --------------------


class _Client:
    """One client connection of a forward: held by the hub until the master has it,
    then only the control connection that lives as long as its channel."""

    __slots__ = ("sock", "ctl", "task")

    def __init__(self, sock: socket.socket):
        self.sock: socket.socket | None = sock
        self.ctl: socket.socket | None = None
        self.task: asyncio.Task | None = None

    def close(self) -> None:
        """End the client's connection (closing the control connection ends the channel)."""
        for sock in (self.sock, self.ctl):
            if sock is not None:
                sock.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()


@dataclass(eq=False)
class _Forward:
    tunnel: SystemTunnel
    key: str
    dest_host: str
    dest_port: int
    local_port: int
    sock: socket.socket | None = None
    clients: set[_Client] = field(default_factory=set)

    def listen(self) -> None:
        """Bind and listen on 127.0.0.1:local_port (0: a free port); OSError if taken."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.local_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.local_port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: pause accepting for a second, as asyncio's servers do
                    self.tunnel.manager.log.error(
                        "Forward %s cannot accept a client: %s; pausing for 1 s", self.local_port, describe_error(exc)
                    )
                    loop.remove_reader(self.sock.fileno())
                    loop.call_later(1.0, self._resume)
                return
            tunnel = self.tunnel
            if tunnel.clients >= tunnel.manager.max_connections:
                conn.close()
                tunnel.manager.log.warning(
                    "Tunnel of %s carries %d connections, its limit (TunnelManager.max_connections): "
                    "refused a new one to %s:%s", tunnel.name, tunnel.clients, self.dest_host, self.dest_port,
                )
                continue
            # as ssh -L does with the connections it accepts: small answers go out at once
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(conn)
            self.clients.add(client)
            client.task = asyncio.ensure_future(self._carry(client))

    def _resume(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    async def _carry(self, client: _Client) -> None:
        """Hand the client to the master (waiting up to reconnect_wait for one), then
        hold its control connection until the master ends the channel."""
        tunnel = self.tunnel
        manager = tunnel.manager
        loop = asyncio.get_running_loop()
        deadline = loop.time() + manager.reconnect_wait
        try:
            while True:
                try:
                    master = tunnel.master
                    if master is None or not master.running:
                        master = await tunnel.wait_connected(max(deadline - loop.time(), 0), fresh_try=False)
                    assert client.sock is not None
                    client.ctl = await sshmux.stdio_forward(
                        master.control_path, client.sock, self.dest_host, self.dest_port, tunnel.where
                    )
                    break
                except sshmux.MuxError as exc:
                    # the master ended under this request: wait for the next one
                    if exc.unreachable and loop.time() < deadline:
                        await asyncio.sleep(0.05)
                        continue
                    reason: str = str(exc)
                except TunnelError as exc:
                    reason = str(exc)
                manager.log.info(
                    "Closing a client of %s -> %s:%s: %s", self.local_port, self.dest_host, self.dest_port, reason
                )
                return
            # the master holds its own copy of the client's socket now
            client.sock.close()
            client.sock = None
            await sshmux.hold(client.ctl)
        finally:
            self.clients.discard(client)
            client.task = None
            client.close()

    async def close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for client in list(self.clients):
            client.close()
        self.clients.clear()


# --- one system --------------------------------------------------------------------------


class SystemTunnel:
    """The jump-host connection (one OpenSSH master) of one system and the forwards it carries."""

    def __init__(self, manager: TunnelManager, name: str, system: System, target: SSHTarget, slot: int):
        self.manager = manager
        self.name = name
        self.system = system
        self.target = target
        #: the master's control socket is ``mux-<slot>.sock`` in the manager's control_dir
        self.slot = slot
        self.master: sshmux.ControlMaster | None = None
        self.forwards: dict[str, _Forward] = {}
        self.last_error = ""
        #: connection attempts so far (successful or not); for fresh-try waits and tests
        self.attempts = 0
        self.connects = 0
        self.hub_api: tuple[str, int] | None = None  # (dest host, dest port) on the hub
        self.hub_api_port: int | None = None  # listening port on the jump host
        #: the open hub API forward as requested of the master (bind, port, host, dest port)
        self._remote: tuple[str, int, str, int] | None = None
        self._supervisor: asyncio.Task | None = None
        self._changed = asyncio.Condition()
        self._closing = False
        # Every change of the master, forwards and the remote forward happens under this
        # lock: a reconnect re-creating the remote forward must not interleave with a
        # spawner adding or removing a forward, or a forward could be lost or doubled.
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return self.target.where

    @property
    def clients(self) -> int:
        """Client connections of all forwards, waiting for the master or carried by it."""
        return sum(len(forward.clients) for forward in self.forwards.values())

    @property
    def master_pid(self) -> int | None:
        """PID of the running master (None while disconnected)."""
        master = self.master
        return master.pid if master is not None and master.running else None

    def retarget(self, system: System, target: SSHTarget) -> None:
        """Take the system's changed catalog definition (a catalog reload).

        A new login (jump host, port, tunnel account, key, known_hosts ...) or new hub
        API forward settings end the current master: the supervisor starts the new one
        and the forwards carry on over it on their local ports, the hub API forward
        requested again. Other changes are taken as they are, without a reconnect.
        """
        before = self.system.ssh
        after = system.ssh
        forward_settings = (
            (before.hub_api_bind, before.hub_api_port) if before else None,
            (after.hub_api_bind, after.hub_api_port) if after else None,
        )
        self.system = system
        relogin = target != self.target or forward_settings[0] != forward_settings[1]
        if not relogin:
            return
        self.manager.log.info(
            "Tunnel of %s: the catalog changed its login to %s@%s; reconnecting",
            self.name, target.username, target.where,
        )
        self.target = target
        if forward_settings[0] != forward_settings[1]:
            self.hub_api_port = None  # the port the catalog names now (or a saved one)
        if self.master is not None:
            self.master.terminate()

    def start(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.ensure_future(self._supervise())

    @property
    def connected(self) -> bool:
        return self.master is not None and self.master.running

    @property
    def hub_api_up(self) -> bool:
        """Whether the hub API remote forward is open on the live connection."""
        return self._remote is not None and self.connected

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_connected(self, timeout: float, fresh_try: bool = True) -> sshmux.ControlMaster:
        """The running master, waiting up to ``timeout`` s.

        With ``fresh_try``, give up as soon as one connection attempt that began after
        this call has failed: a spawn should not wait for a host that refuses us.
        """
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempts_before = self.attempts
        async with self._changed:
            while True:
                if self.connected:
                    return self.master  # type: ignore[return-value]
                if fresh_try and self.attempts > attempts_before:
                    raise TunnelError(f"Cannot open the tunnel connection: {self.last_error}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TunnelError(
                        f"The tunnel connection to {self.where} is not up after {timeout:.0f} s"
                        + (f" ({self.last_error})" if self.last_error else "")
                    )
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    def _ssh_said(self, line: str) -> None:
        self.manager.log.debug("Tunnel of %s: ssh: %s", self.name, line)

    async def _supervise(self) -> None:
        """Start the master, restore the remote forward, wait for its end, start again
        with backoff."""
        manager = self.manager
        failures = 0
        while not self._closing:
            master = sshmux.ControlMaster(
                self.target, manager.control_dir_path(), str(self.slot), cipher=manager.ciphers or None, on_line=self._ssh_said
            )
            try:
                await master.start()
            except sshmux.MuxError as exc:
                self.attempts += 1
                failures += 1
                self.last_error = str(exc)
                delay = min(manager.reconnect_min_delay * 2 ** (failures - 1), manager.reconnect_max_delay)
                delay *= random.uniform(0.8, 1.2)
                self.manager.log.warning("Tunnel of %s: %s; next try in %.1f s", self.name, exc, delay)
                await self._notify()
                # only a host that did not answer at all is watched for its return; one
                # that refused the login keeps its backoff (no login attempt per second)
                if exc.unreachable and await self._wait_for_host(delay):
                    # the host answers again: the backoff has done its job
                    self.manager.log.info("Tunnel of %s: %s answers again; reconnecting now", self.name, self.where)
                    failures = 0
                elif not exc.unreachable:
                    await asyncio.sleep(delay)
                continue
            try:
                async with self._lock:
                    if self._closing:
                        break
                    self.master = master
                    self.attempts += 1
                    self.connects += 1
                    self.last_error = ""
                    if self.hub_api is not None:
                        await self._open_remote_forward()
                failures = 0
                self.manager.log.info(
                    "Tunnel of %s connected to %s (connection %d, ssh master pid %s)",
                    self.name, self.where, self.connects, master.pid,
                )
                await self._notify()
                await self._hold(master)
                async with self._lock:
                    self.master = None
                    self._remote = None
            finally:
                await master.stop()
            if not self._closing:
                said = next((line for line in reversed(master.last_lines) if line), "")
                self.last_error = f"lost the connection to {self.where}"
                self.manager.log.warning(
                    "Tunnel of %s lost its connection to %s%s; reconnecting",
                    self.name, self.where, f" (ssh: {said})" if said else "",
                )
            await self._notify()

    async def _hold(self, master: sshmux.ControlMaster) -> None:
        """Wait until ``master`` ends; meanwhile ask again for a hub API forward the jump
        host refused (a port still held for a connection of a crashed hub is freed
        once the host notices that connection is dead)."""
        ended = asyncio.ensure_future(master.wait())
        try:
            while True:
                done, _ = await asyncio.wait([ended], timeout=self.manager.remote_forward_retry_interval)
                if done:
                    return
                if self.hub_api is not None and self._remote is None:
                    async with self._lock:
                        if self.connected and self.hub_api is not None and self._remote is None:
                            await self._open_remote_forward(tries=1, quiet=True)
        finally:
            ended.cancel()

    async def _wait_for_host(self, delay: float) -> bool:
        """Sleep ``delay`` s, waking early (True) once the jump host accepts a TCP
        connection; checked every ``health_check_interval`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        interval = self.manager.health_check_interval
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(interval, remaining))
            if self._closing:
                return False
            if await self._host_answers(min(interval, 5.0)):
                return True

    async def _host_answers(self, timeout: float) -> bool:
        """Whether the jump host's SSH port accepts a TCP connection within ``timeout`` s
        (it is closed at once; no SSH handshake)."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.target.host, self.target.port), timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    # --- hub API remote forward -------------------------------------------------------

    async def _open_remote_forward(self, tries: int = 0, quiet: bool = False) -> None:
        """Request the hub API forward of the live master (caller holds the lock).

        ``tries`` (default ``remote_forward_retries``) attempts 0.5 s apart on a known
        port; ``quiet`` logs a refusal at debug level (a retry in the background).
        """
        assert self.master is not None and self.hub_api is not None
        ssh = self.system.ssh
        assert ssh is not None
        port = self.hub_api_port or ssh.hub_api_port or self.manager.saved_port(self.name)
        tries = (tries or self.manager.remote_forward_retries) if port else 1
        for attempt in range(tries):
            try:
                got = await sshmux.remote_forward(
                    self.master.control_path, ssh.hub_api_bind, port, *self.hub_api, where=self.where
                )
            except sshmux.MuxError as exc:
                self.last_error = (
                    f"{self.where} refused the hub API forward on {ssh.hub_api_bind or '*'}:{port}: "
                    f"{str(exc).rsplit(': ', 1)[-1]}"
                )
                if attempt + 1 < tries and self.connected:
                    # after a hub crash the jump host may still hold the port for the
                    # old connection for a moment: running jobs know only this port
                    await asyncio.sleep(0.5)
                    continue
                log = self.manager.log.debug if quiet else self.manager.log.error
                log("Tunnel of %s: %s%s", self.name, self.last_error, "; asking again while connected" if not quiet else "")
                return
            break
        self._remote = (ssh.hub_api_bind, port, *self.hub_api)
        self.hub_api_port = got
        self.manager.save_port(self.name, got)
        self.manager.log.info(
            "Tunnel of %s: hub API forward %s:%s on %s -> %s:%s",
            self.name, ssh.hub_api_bind or "*", got, self.where, *self.hub_api,
        )

    async def _close_remote_forward(self) -> None:
        """Cancel the open hub API forward (caller holds the lock)."""
        remote, self._remote = self._remote, None
        if remote is None or self.master is None:
            return
        try:
            await sshmux.cancel_remote_forward(self.master.control_path, *remote, where=self.where)
        except sshmux.MuxError as exc:
            self.manager.log.warning("Tunnel of %s: %s", self.name, exc)

    async def hub_api_address(self, hub_api_url: str, timeout: float, fresh_try: bool = True) -> tuple[str, int]:
        """(host, port) by which jobs reach the hub API through the jump host.

        ``fresh_try`` as in :meth:`wait_connected`; a restore after a hub restart waits
        the whole ``timeout`` for a host that is still coming back.
        """
        parsed = urlparse(hub_api_url)
        dest = (parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80))
        if self.hub_api is None:
            # known from now on: every (re)connect requests the forward, also while
            # this call is still waiting for the connection
            self.hub_api = dest
        await self.wait_connected(timeout, fresh_try=fresh_try)
        async with self._lock:
            if self.hub_api != dest:
                self.hub_api = dest
                await self._close_remote_forward()
            if self._remote is None and self.connected:
                await self._open_remote_forward()
            if self._remote is None:
                raise TunnelError(f"Cannot open the hub API forward: {self.last_error}")
        return self._jobs_host(), self.hub_api_port  # type: ignore[return-value]

    def _jobs_host(self) -> str:
        ssh = self.system.ssh
        assert ssh is not None
        if ssh.hub_api_host:
            return ssh.hub_api_host
        if ssh.hub_api_bind in ("localhost", "127.0.0.1"):
            return "127.0.0.1"
        if ssh.hub_api_bind and ssh.hub_api_bind not in ("0.0.0.0", "*", "::"):
            return ssh.hub_api_bind
        return self.target.host

    # --- local forwards ----------------------------------------------------------------

    async def add_forward(
        self,
        key: str,
        dest_host: str,
        dest_port: int,
        local_port: int = 0,
        *,
        timeout: float,
        probe: bool = True,
        wake: asyncio.Event | None = None,
    ) -> int:
        """Forward ``127.0.0.1:<local port>`` to ``dest_host:dest_port``; returns the port.

        ``local_port`` 0 picks a free port. With ``probe``, waits until the destination
        accepts a connection through the jump host (a lab that is still starting), up to
        ``timeout`` s, trying every ``probe_interval`` s and at once whenever ``wake`` is
        set (the lab said it runs). An existing forward of ``key`` to the same
        destination is kept.
        """
        async with self._lock:
            existing = self.forwards.get(key)
            if existing is not None and (existing.dest_host, existing.dest_port) == (dest_host, dest_port):
                return existing.local_port
            if existing is not None:
                await existing.close()
                del self.forwards[key]
            forward = _Forward(self, key, dest_host, dest_port, local_port)
            try:
                forward.listen()
            except OSError as exc:
                raise TunnelError(
                    f"Cannot listen on 127.0.0.1:{local_port} for the tunnel to {dest_host}:{dest_port}: {describe_error(exc)}"
                ) from exc
            self.forwards[key] = forward
        self.start()
        if probe:
            try:
                await self._probe(dest_host, dest_port, timeout, wake)
            except TunnelError:
                await self.remove_forward(key)
                raise
        return forward.local_port

    async def _probe(self, dest_host: str, dest_port: int, timeout: float, wake: asyncio.Event | None = None) -> None:
        """Wait until ``dest_host:dest_port`` accepts a channel through the jump host; the
        next try comes after ``probe_interval`` s, or as soon as ``wake`` is set."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while True:
            remaining = deadline - loop.time()
            try:
                master = await self.wait_connected(max(remaining, 0.1))
                await asyncio.wait_for(
                    sshmux.probe(master.control_path, dest_host, dest_port, self.where), max(remaining, 0.1)
                )
            except TunnelError as exc:
                last = str(exc)
            except TimeoutError:
                last = "no answer"
            except sshmux.MuxError as exc:
                last = str(exc)
            else:
                return
            if loop.time() >= deadline:
                raise TunnelError(
                    f"Cannot open a tunnel through {self.target.host} to {dest_host}:{dest_port} "
                    f"within {timeout:.0f} s: {last}"
                )
            pause = min(self.manager.probe_interval, max(deadline - loop.time(), 0))
            if wake is None:
                await asyncio.sleep(pause)
                continue
            try:
                await asyncio.wait_for(wake.wait(), pause)
            except TimeoutError:
                pass
            wake.clear()

    async def remove_forward(self, key: str) -> None:
        async with self._lock:
            forward = self.forwards.pop(key, None)
            if forward is not None:
                await forward.close()

    def healthy(self, key: str) -> bool:
        return key in self.forwards and self.connected

    async def close(self) -> None:
        """Close every forward and end the master (waiting for its PID to exit)."""
        async with self._lock:
            self._closing = True
            forwards, self.forwards = list(self.forwards.values()), {}
            master = self.master
        for forward in forwards:
            await forward.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
        if master is not None:
            await master.stop()
        self.master = None


# --- the manager -----------------------------------------------------------------------


class TunnelManager(LoggingConfigurable):
    """All tunnels of the hub: one :class:`SystemTunnel` per system. Owned by HPCGate."""

    state_dir = Unicode(
        "",
        help="""Directory where the manager keeps the jump-host port of each system's hub
        API forward (tunnels.json), so that it survives a hub restart. Set by HPCGate.""",
    )

    reconnect_min_delay = Float(
        0.5,
        help="""Seconds before the first reconnect after a tunnel connection failed or
        dropped; doubles with each failure (with +-20% jitter) up to reconnect_max_delay.""",
    ).tag(config=True)

    reconnect_max_delay = Float(
        15.0,
        help="Upper bound, in seconds, of the wait between two reconnect attempts.",
    ).tag(config=True)

    reconnect_wait = Float(
        20.0,
        help="""Seconds a client connecting to a forward's local port waits for the SSH
        connection to come back while it is being re-opened, before its connection is
        closed.""",
    ).tag(config=True)

    connect_wait = Float(
        60.0,
        help="""Seconds a spawn waits for the tunnel connection of its system. A spawn
        gives up earlier, with the reason, as soon as one fresh connection attempt has
        failed.""",
    ).tag(config=True)

    health_check_interval = Float(
        1.0,
        help="""Seconds between checks, while a tunnel waits out its reconnect backoff,
        whether the jump host accepts TCP connections again (a plain connect to its SSH
        port, no login). The first check that succeeds resets the backoff and
        reconnects at once: a host that is back carries traffic again within this
        interval plus one SSH handshake.""",
    ).tag(config=True)

    remote_forward_retries = Integer(
        10,
        help="""Attempts, 0.5 s apart, to get the hub API forward back on its known
        jump-host port when the host refuses it (after a hub crash the host may hold
        the port for the dead connection for a moment). Running jobs know only that
        port.""",
    ).tag(config=True)

    remote_forward_retry_interval = Float(
        5.0,
        help="""Seconds between further requests for a hub API forward the jump host
        refused, for as long as the tunnel connection lasts.""",
    ).tag(config=True)

    probe_interval = Float(
        0.5,
        help="""Seconds between attempts to reach a new server through its tunnel while
        the server is still starting to listen.""",
    ).tag(config=True)

    max_connections = Integer(
        7500,
        help="""Client connections one system's tunnel carries at once; more are closed
        at once (and logged). OpenSSH ends a client that would open more than 16384
        channels, and each tunnelled connection takes two in the master (its channel and
        its control connection): the default keeps the master, and every other
        connection of the system, alive.""",
    ).tag(config=True)

    control_dir = Unicode(
        "",
        help="""Directory of the SSH masters' control sockets (one per system; whoever
        can connect to one opens channels as the tunnel account, so the directory is
        made mode 0700). Empty: ``<state_dir>/tunnels`` when that path is short enough
        for a Unix socket, else a private temporary directory removed at close.""",
    ).tag(config=True)

    ciphers = Unicode(
        "",
        help="""OpenSSH cipher list for the tunnel connections (``ssh -c``, e.g.
        ``aes256-gcm@openssh.com,chacha20-poly1305@openssh.com``). Empty: OpenSSH's own
        preference order, negotiated with the jump host.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._tunnels: dict[str, SystemTunnel] = {}
        self._ports: dict[str, int] | None = None
        self._slots = 0
        self._control_dir: str | None = None
        self._own_control_dir = False

    def control_dir_path(self) -> str:
        """The masters' control directory (created on first use, mode 0700)."""
        if self._control_dir is None:
            # a socket path is limited to 107 bytes; ssh binds a temporary name 17 bytes
            # longer than "<dir>/mux-<slot>.sock" first
            wanted = self.control_dir or (str(Path(self.state_dir) / "tunnels") if self.state_dir else "")
            if wanted and len(wanted) + len("/mux-9999.sock") + 17 < 107:
                os.makedirs(wanted, mode=0o700, exist_ok=True)
                os.chmod(wanted, 0o700)
                self._control_dir = wanted
            else:
                if self.control_dir:
                    self.log.warning("TunnelManager.control_dir %s is too long for a socket path; using a temporary one", wanted)
                self._control_dir = tempfile.mkdtemp(prefix="hpcgate-tunnels-")
                self._own_control_dir = True
        return self._control_dir

    # --- persisted hub API ports --------------------------------------------------------

    def _ports_file(self) -> Path | None:
        return Path(self.state_dir) / "tunnels.json" if self.state_dir else None

    def saved_port(self, system_name: str) -> int:
        if self._ports is None:
            path = self._ports_file()
            try:
                data = json.loads(path.read_text()) if path else {}
            except (OSError, ValueError):
                data = {}
            self._ports = {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}
        return self._ports.get(system_name, 0)

    def save_port(self, system_name: str, port: int) -> None:
        self.saved_port(system_name)
        assert self._ports is not None
        if self._ports.get(system_name) == port:
            return
        self._ports[system_name] = port
        path = self._ports_file()
        if path is not None:
            write_atomic(path, json.dumps(self._ports))

    # --- per system ---------------------------------------------------------------------

    def tunnel(self, system_name: str, system: System) -> SystemTunnel:
        """The tunnel of a system (created, not yet connected, on first use).

        ``system`` is the catalog's current definition: a tunnel built from an older
        one is brought up to date first (:meth:`update`).
        """
        tunnel = self._tunnels.get(system_name)
        if tunnel is None:
            target = self._target(system_name, system)
            self._slots += 1
            tunnel = self._tunnels[system_name] = SystemTunnel(self, system_name, system, target, self._slots)
        elif tunnel.system != system:
            tunnel.retarget(system, self._target(system_name, system))
        return tunnel

    def _target(self, system_name: str, system: System) -> SSHTarget:
        """The login of a system's tunnel connection; :class:`TunnelError` if it has none."""
        host = system.tunnel_host
        if host is None or system.ssh is None:
            raise TunnelError(f"System {system_name} has no jump host or ssh section; it needs no tunnel.")
        try:
            # the tunnel has its own connection: no pool needed to compute its login
            remote = SystemRemote(system_name, system, pool=None, template_values={"state_dir": self.state_dir})
            return remote.tunnel_target(host)
        except RemoteError as exc:
            raise TunnelError(str(exc)) from exc

    def update(self, system_name: str, system: System) -> None:
        """The catalog changed a system: its tunnel (if any) follows (see :meth:`SystemTunnel.retarget`).

        A definition that can carry no tunnel any more is logged and leaves the tunnel
        as it was, so that running servers stay reachable.
        """
        tunnel = self._tunnels.get(system_name)
        if tunnel is None or tunnel.system == system:
            return
        try:
            tunnel.retarget(system, self._target(system_name, system))
        except TunnelError as exc:
            self.log.error("Tunnel of %s keeps its previous login: %s", system_name, exc)

    def get(self, system_name: str) -> SystemTunnel | None:
        return self._tunnels.get(system_name)

    def all(self) -> dict[str, SystemTunnel]:
        """Every system's tunnel by system name (a copy; for the metrics)."""
        return dict(self._tunnels)

    async def hub_api_url(self, system_name: str, system: System, hub_api_url: str) -> str:
        """``hub_api_url`` rewritten to the jump-host address of the system's hub API forward."""
        host, port = await self.tunnel(system_name, system).hub_api_address(hub_api_url, self.connect_wait)
        return self._url(hub_api_url, host, port)

    @staticmethod
    def _url(hub_api_url: str, host: str, port: int) -> str:
        parsed = urlparse(hub_api_url)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urlunparse(parsed._replace(netloc=netloc))

    async def open_forward(
        self,
        system_name: str,
        system: System,
        key: str,
        dest_host: str,
        dest_port: int,
        *,
        timeout: float,
        wake: asyncio.Event | None = None,
    ) -> int:
        """Open (and probe) a forward for a new server; returns the local port. ``wake``:
        set when the server says it runs, for a probe at once (see ``add_forward``)."""
        tunnel = self.tunnel(system_name, system)
        return await tunnel.add_forward(key, dest_host, dest_port, timeout=timeout, wake=wake)

    async def restore_forward(
        self, system_name: str, system: System, key: str, dest_host: str, dest_port: int, local_port: int
    ) -> int:
        """Re-create a forward from spawner state on the SAME local port (hub restart).

        Does not wait for the connection: clients wait for it (``reconnect_wait``).
        Logs the forward restored, or why it could not be (and raises TunnelError).
        """
        try:
            tunnel = self.tunnel(system_name, system)
            port = await tunnel.add_forward(key, dest_host, dest_port, local_port, timeout=0, probe=False)
        except TunnelError as exc:
            self.log.error("Cannot restore the forward of %s (%s): %s", key, system_name, exc)
            raise
        self.log.info(
            "Restored the forward of %s: 127.0.0.1:%s -> %s:%s through %s", key, port, dest_host, dest_port, tunnel.where
        )
        return port

    async def restore_hub_api(self, system_name: str, system: System, hub_api_url: str, timeout: float) -> str:
        """Re-open the system's hub API forward after a hub restart, on its saved
        jump-host port, waiting up to ``timeout`` s for the connection. Idempotent;
        logs the forward restored, or why it could not be (and raises TunnelError)."""
        tunnel = self.tunnel(system_name, system)
        if tunnel.hub_api_up:
            return await self.hub_api_url(system_name, system, hub_api_url)
        try:
            host, port = await tunnel.hub_api_address(hub_api_url, timeout, fresh_try=False)
        except TunnelError as exc:
            self.log.error("Cannot restore the hub API forward of %s: %s", system_name, exc)
            raise
        self.log.info("Restored the hub API forward of %s: jobs reach the hub at %s:%s", system_name, host, port)
        return self._url(hub_api_url, host, port)

    def has_forward(self, system_name: str, key: str) -> bool:
        tunnel = self._tunnels.get(system_name)
        return tunnel is not None and key in tunnel.forwards

    def hub_api_up(self, system_name: str) -> bool:
        """Whether the system's hub API forward is open (see :meth:`restore_hub_api`)."""
        tunnel = self._tunnels.get(system_name)
        return tunnel is not None and tunnel.hub_api_up

    def healthy(self, system_name: str, key: str) -> bool:
        tunnel = self._tunnels.get(system_name)
        return tunnel is not None and tunnel.healthy(key)

    async def close_forward(self, system_name: str, key: str) -> None:
        tunnel = self._tunnels.get(system_name)
        if tunnel is not None:
            await tunnel.remove_forward(key)

    async def close(self) -> None:
        """Close every tunnel: forwards closed, every master ended and waited for."""
        tunnels, self._tunnels = list(self._tunnels.values()), {}
        for tunnel in tunnels:
            await tunnel.close()
        if self._own_control_dir and self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
            self._own_control_dir = False
