"""Half-close vs throughput: the TunnelManager's data path against one that carries a
server's half-close, and ``ssh -L``.

The TunnelManager hands each client socket to the OpenSSH master as a stdio forward:
the master copies the bytes itself, but it ends the channel on the server's EOF
(OpenSSH's "force drain"), so a server that shuts down only its write side cuts the
client's way back. A master-owned local forward on a Unix socket, with the hub
relaying each client to it by splice(2) (benchmarks/relay_forward.py, not used by
hpcgate), carries half-close both ways like ``ssh -L``; this measures what the relay
costs. Same sshd, same account, same cipher, interleaved rounds, best of them (the
machine is shared); client CPU = hub-side process + master (ssh -L: its process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

from harness.sshd import TUNNEL_USER, LoopbackSSHD, running_sshd
from hpcgate.net import free_port

from .bench_tunnels import CIPHERS, MIB, BlobServer, TunnelProcess, interleaved_downloads, ssh_argv, wait_port
from .report import median, ratio, table

ROUNDS = int(os.environ.get("HPCGATE_BENCH_HALFCLOSE_ROUNDS", "3"))
OURS = "hpcgate TunnelManager (stdio forward, master copies)"
RELAY = "master-owned local forward + hub splice relay"
SSH_L = "ssh -L (OpenSSH)"


class RelayProcess:
    """benchmarks/relay_forward.py in a process of its own, its master its child."""

    def __init__(self, sshd: LoopbackSSHD, dest_port: int, cipher: str):
        target = {
            "port": sshd.port, "username": TUNNEL_USER,
            "key_path": str(sshd.keys[TUNNEL_USER]), "known_hosts": str(sshd.known_hosts),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.relay_forward", json.dumps(target), str(dest_port), cipher],
            stdout=subprocess.PIPE, text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()  # the master ends with it (parent death signal)
        self.proc.wait()
        self.proc.stdout.close()


class HalfClosingApp:
    """A TCP app that sends ``hello``, shuts its write side down and keeps what it
    reads afterwards (``received``, one entry per connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                try:
                    conn.sendall(b"hello")
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(10)
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)


def keeps_the_way_back(app: HalfClosingApp, port: int) -> str:
    """Through ``port``: does the client see the app's EOF, and does what it sends after
    that still reach the app?"""
    before = len(app.received)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except TimeoutError:
            return "no EOF"
        try:
            sock.sendall(b"still here")
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    for _ in range(200):
        if len(app.received) > before and app.received[-1] != b"":
            break
        threading.Event().wait(0.05)
    return "yes" if got == b"hello" and app.received[-1:] == [b"still here"] else "no (the channel ended)"


def half_close(sshd: LoopbackSSHD, tmp: str) -> dict[str, str]:
    app = HalfClosingApp()
    ours = TunnelProcess(sshd.system_data(), tmp, app.port, 1)
    relay = RelayProcess(sshd, app.port, CIPHERS[0])
    ssh_port = free_port()
    ssh = subprocess.Popen(ssh_argv(sshd, CIPHERS[0], "-L", f"127.0.0.1:{ssh_port}:127.0.0.1:{app.port}"))
    try:
        wait_port(ssh_port)
        ports = {OURS: ours.info["ports"][0], RELAY: relay.info["port"], SSH_L: ssh_port}
        return {name: keeps_the_way_back(app, port) for name, port in ports.items()}
    finally:
        ssh.kill()
        ssh.wait()
        ours.close()
        relay.close()
        app.sock.close()


def run() -> None:
    with running_sshd() as sshd, tempfile.TemporaryDirectory() as tmp:
        works = half_close(sshd, tmp)
        server = BlobServer()
        try:
            for cipher in CIPHERS:
                ours = TunnelProcess(sshd.system_data(), tmp, server.port, 1, cipher)
                relay = RelayProcess(sshd, server.port, cipher)
                ssh_port = free_port()
                ssh = subprocess.Popen(ssh_argv(sshd, cipher, "-L", f"127.0.0.1:{ssh_port}:127.0.0.1:{server.port}"))
                try:
                    wait_port(ssh_port)
                    ports = {OURS: ours.info["ports"][0], RELAY: relay.info["port"], SSH_L: ssh_port}
                    pids = {
                        OURS: (ours.proc.pid, ours.info["master"]),
                        RELAY: (relay.proc.pid, relay.info["master"]),
                        SSH_L: (ssh.pid,),
                    }
                    times, cpu = interleaved_downloads(ports, pids, ROUNDS)
                finally:
                    ssh.kill()
                    ssh.wait()
                    ours.close()
                    relay.close()
                t = min(times[SSH_L])
                table(
                    f"{MIB} MiB download over SSH, cipher {cipher}, best of {ROUNDS} interleaved rounds; "
                    "half-close: the app shuts down writing, the client still sends",
                    ["design", "seconds", "MiB/s", "speed vs ssh -L", "client CPU s (median)", "CPU ssh -L / this",
                     "half-close carried"],
                    [
                        [name, min(v), MIB / min(v), ratio(t, min(v)), median(cpu[name]),
                         ratio(median(cpu[SSH_L]), median(cpu[name])), works[name]]
                        for name, v in times.items()
                    ],
                )
        finally:
            server.stop()
