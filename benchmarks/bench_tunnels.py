"""Tunnels: hpcgate's TunnelManager vs OpenSSH ``ssh -L``, side by side in one run.

1. Throughput: a 500 MiB HTTP download (curl) through hpcgate's forward and through
   ``ssh -N -L``, same sshd, same account, same cipher (whatever hpcgate negotiated).
2. Memory (PSS, shared pages split fairly): growth of the tunnel process per forward
   with 200 forwards on one connection, vs one ``ssh -L`` process per forward (as a
   tunnel service built on OpenSSH runs).
3. Spawn on the sandbox login node (kind ssh, real hub), split into its phases from
   the progress events: SSH connect + hub API forward, submit over SSH, the address
   reported, JupyterLab listening + the tunnel's probe through it, routing (until
   JupyterHub says ready).

The sshd for 1 and 2 is the loopback sshd of the tests (harness/sshd.py, real OpenSSH);
part 3 needs the sandbox (root) and says so when it cannot run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.sshd import FAKE_LAB, TUNNEL_USER, LoopbackSSHD, running_sshd
from hpcgate import protocol
from hpcgate.net import free_port

from .report import median, ratio, table

MIB = int(os.environ.get("HPCGATE_BENCH_MIB", "500"))
FORWARDS = int(os.environ.get("HPCGATE_BENCH_FORWARDS", "200"))
SPAWNS = int(os.environ.get("HPCGATE_BENCH_SPAWNS", "3"))


def pss_kib(pid: int | str) -> int:
    """Proportional set size: shared library pages split among the processes using them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class BlobServer:
    """The stand-in lab (serves /blob/<MiB>) on 127.0.0.1, and the "kernel" it starts.

    The kernel (``sleep``) runs in a session of its own, as Jupyter's kernels do, so
    killing the server leaves it: :meth:`stop` ends both, and nothing of this benchmark
    outlives it holding its output open.
    """

    def __init__(self) -> None:
        script = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        script.write(FAKE_LAB)
        script.close()
        self.script = script.name
        env = {**os.environ, protocol.BIND_IP: "127.0.0.1"}
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", script.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
        )
        line = self.proc.stdout.readline()
        self.port = int(re.search(r":(\d+)$", line.strip()).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as r:
            self.kernel = int(json.loads(r.read())["kernel"])

    def stop(self) -> None:
        for pid in (self.kernel, self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc.stdout.close()
        os.unlink(self.script)


def curl_seconds(port: int, mib: int) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", f"http://127.0.0.1:{port}/blob/{mib}"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    return float(out)


def ssh_argv(sshd: LoopbackSSHD, cipher: str, *extra: str) -> list[str]:
    return [
        "ssh", "-N", "-F", "/dev/null", "-c", cipher,
        "-i", str(sshd.keys[TUNNEL_USER]), "-p", str(sshd.port),
        "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
        *extra, f"{TUNNEL_USER}@127.0.0.1",
    ]


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def ssh_forwards(sshd: LoopbackSSHD, cipher: str, dest: int, count: int) -> list[subprocess.Popen]:
    """``count`` running ``ssh -L`` processes to ``dest``; one whose port was taken
    meanwhile (it exits: "Address already in use") is started again on another port."""
    running: list[subprocess.Popen] = []
    for _attempt in range(5):
        batch = {}
        for _ in range(count - len(running)):
            port = free_port()
            argv = ssh_argv(sshd, cipher, "-L", f"127.0.0.1:{port}:127.0.0.1:{dest}")
            batch[port] = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        for port, proc in batch.items():
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    wait_port(port, timeout=0.5)
                    break
                except RuntimeError:
                    continue
            if proc.poll() is None:
                running.append(proc)
            else:
                proc.wait()
        if len(running) == count:
            return running
    raise RuntimeError(f"only {len(running)} of {count} ssh -L forwards came up")


class TunnelProcess:
    """The TunnelManager in a process of its own, as in the hub (its loop serves only it)."""

    CODE = r"""
import asyncio, json, sys
from hpcgate.catalog import System
from hpcgate.remote import pool
from hpcgate.remote.tunnels import TunnelManager
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
if extra:  # a variant of asyncssh's connection options (cipher, window, packet size)
    plain = pool.SSHTarget.connect_options
    pool.SSHTarget.connect_options = lambda self: {**plain(self), **extra}
async def main():
    system = System.model_validate(json.loads(sys.argv[1]))
    manager = TunnelManager(state_dir=sys.argv[2])
    dest_port, count = int(sys.argv[3]), int(sys.argv[4])
    before = None
    ports = []
    for i in range(count):
        ports.append(await manager.open_forward("bench", system, f"k{i}", "127.0.0.1", dest_port, timeout=30))
        if i == 0:
            before = open("/proc/self/smaps_rollup").read()
    conn = manager.get("bench").conn
    print(json.dumps({"ports": ports, "cipher": conn.get_extra_info("send_cipher"), "status_after_first": before}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

    def __init__(self, system_data: dict, state_dir: str, dest_port: int, count: int, options: dict | None = None):
        import json

        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, json.dumps(system_data), state_dir, str(dest_port), str(count),
             json.dumps(options or {})],
            stdout=subprocess.PIPE, text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class MuxProcess:
    """The design measured against asyncssh: OpenSSH's ControlMaster carries the data; a
    process of its own (as the hub's loop would) owns the listening port and hands each
    accepted client to the master (hpcgate.remote.sshmux.stdio_forward)."""

    CODE = r"""
import asyncio, json, socket, sys
from hpcgate.remote import sshmux
from hpcgate.remote.pool import SSHTarget
async def main():
    target = SSHTarget(**json.loads(sys.argv[1]))
    master = sshmux.ControlMaster(target, sys.argv[2], "bench", cipher=sys.argv[4])
    await master.start()
    dest = int(sys.argv[3])
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0)); lsock.listen(128); lsock.setblocking(False)
    print(json.dumps({"port": lsock.getsockname()[1], "master": master.proc.pid}), flush=True)
    loop = asyncio.get_running_loop()
    async def handle(client):
        try:
            ctl = await sshmux.stdio_forward(master.control_path, client, "127.0.0.1", dest)
        finally:
            client.close()
        await sshmux.hold(ctl)
    while True:
        client, _ = await loop.sock_accept(lsock)
        asyncio.ensure_future(handle(client))
asyncio.run(main())
"""

    def __init__(self, sshd: LoopbackSSHD, state_dir: str, dest_port: int, cipher: str):
        import json

        target = {
            "host": "127.0.0.1", "port": sshd.port, "username": TUNNEL_USER,
            "key_path": str(sshd.keys[TUNNEL_USER]), "known_hosts": str(sshd.known_hosts),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, json.dumps(target), state_dir, str(dest_port), cipher],
            stdout=subprocess.PIPE, text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.terminate()  # its asyncio.run ends the master (SIGTERM -> KeyboardInterrupt not raised)
        self.proc.wait()
        try:
            os.kill(self.info["master"], 15)
        except ProcessLookupError:
            pass


CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com")
FRESH = int(os.environ.get("HPCGATE_BENCH_TUNNEL_FRESH", "200"))


def fresh_connections_per_s(port: int, count: int = FRESH) -> float:
    """Small GETs, each on a new TCP connection (a new channel each): setup cost of a path."""
    import http.client

    started = time.perf_counter()
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
    return count / (time.perf_counter() - started)
ASYNCSSH_TUNED = {"window": 8 << 20, "max_pktsize": 256 << 10}


def throughput_by_design(sshd: LoopbackSSHD, tmp: str) -> None:
    """Each tunnel design against ``ssh -L`` with the same cipher, interleaved rounds."""
    server = BlobServer()
    dest = server.port
    rounds = int(os.environ.get("HPCGATE_BENCH_TUNNEL_ROUNDS", "3"))
    try:
        for cipher in CIPHERS:
            data = sshd.system_data()
            designs = {
                "asyncssh (as shipped)": TunnelProcess(data, tmp, dest, 1, {"encryption_algs": [cipher]}),
                "asyncssh, 8 MiB window, 256 KiB packets": TunnelProcess(
                    data, tmp, dest, 1, {"encryption_algs": [cipher], **ASYNCSSH_TUNED}
                ),
            }
            mux = MuxProcess(sshd, tmp, dest, cipher)
            theirs_port = free_port()
            ssh = subprocess.Popen(ssh_argv(sshd, cipher, "-L", f"127.0.0.1:{theirs_port}:127.0.0.1:{dest}"))
            try:
                wait_port(theirs_port)
                ports = {k: v.info["ports"][0] for k, v in designs.items()}
                ports["OpenSSH master, hub-owned port (mux stdio forward)"] = mux.info["port"]
                ports["ssh -L (OpenSSH)"] = theirs_port
                times: dict[str, list[float]] = {k: [] for k in ports}
                fresh: dict[str, float] = {}
                for port in ports.values():
                    curl_seconds(port, 16)
                for _ in range(rounds):
                    for name, port in ports.items():
                        times[name].append(curl_seconds(port, MIB))
                for name, port in ports.items():
                    fresh[name] = fresh_connections_per_s(port)
            finally:
                ssh.kill()
                ssh.wait()
                mux.close()
                for d in designs.values():
                    d.close()
            # best of the rounds: the machine is shared, the minimum is the least disturbed
            t = min(times["ssh -L (OpenSSH)"])
            table(
                f"{MIB} MiB download over SSH to 127.0.0.1, cipher {cipher}, best of {rounds} interleaved rounds",
                ["design", "seconds", "MiB/s", "speed vs ssh -L", f"new connections/s ({FRESH} GETs)", "vs ssh -L"],
                [
                    [name, min(v), MIB / min(v), ratio(t, min(v)), fresh[name], ratio(fresh[name], fresh["ssh -L (OpenSSH)"])]
                    for name, v in times.items()
                ],
            )
    finally:
        server.stop()


def throughput_and_memory(sshd: LoopbackSSHD, tmp: str) -> None:
    server = BlobServer()
    dest = server.port
    try:
        data = sshd.system_data()
        one = TunnelProcess(data, tmp, dest, 1)
        cipher = one.info["cipher"]
        ours_port = one.info["ports"][0]
        theirs_port = free_port()
        ssh = subprocess.Popen(ssh_argv(sshd, cipher, "-L", f"127.0.0.1:{theirs_port}:127.0.0.1:{dest}"))
        try:
            wait_port(theirs_port)
            curl_seconds(ours_port, 16)
            curl_seconds(theirs_port, 16)
            ours, theirs, direct = [], [], []
            for _ in range(2):
                ours.append(curl_seconds(ours_port, MIB))
                theirs.append(curl_seconds(theirs_port, MIB))
            direct.append(curl_seconds(dest, MIB))
        finally:
            ssh.kill()
            ssh.wait()
            one.close()
        o, t = median(ours), median(theirs)
        table(
            f"{MIB} MiB download over SSH to 127.0.0.1 (cipher {cipher}), median of 2",
            ["path", "seconds", "MiB/s", "vs ssh -L"],
            [
                ["hpcgate forward", o, MIB / o, ratio(o, t)],
                ["ssh -L (OpenSSH)", t, MIB / t, "1.00x"],
                ["direct, no tunnel", direct[0], MIB / direct[0], ratio(direct[0], t)],
            ],
        )

        # memory: one connection with FORWARDS forwards vs FORWARDS ssh -L processes
        many = TunnelProcess(data, tmp, dest, FORWARDS)
        try:
            after_first = next(
                int(line.split()[1]) for line in many.info["status_after_first"].splitlines() if line.startswith("Pss:")
            )
            ok = sum(1 for p in many.info["ports"][:20] if curl_seconds(p, 1) > 0)
            total = pss_kib(many.proc.pid)
        finally:
            many.close()
        per_forward_ours = (total - after_first) / max(FORWARDS - 1, 1)
        procs: list[subprocess.Popen] = []
        try:
            for _ in range(FORWARDS // 20):
                procs += ssh_forwards(sshd, cipher, dest, 20)
            ssh_rss = [pss_kib(p.pid) for p in procs]
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
        per_forward_theirs = sum(ssh_rss) / len(ssh_rss)
        table(
            f"Hub-side memory per forward, {FORWARDS} forwards ({ok}/20 checked by a download)",
            ["tunnels", "PSS KiB per forward", "total PSS MiB", "ssh -L / this"],
            [
                ["hpcgate: 1 connection", per_forward_ours, total / 1024, ratio(per_forward_theirs, per_forward_ours)],
                [f"ssh -L: {FORWARDS} processes", per_forward_theirs, sum(ssh_rss) / 1024, "1.00x"],
            ],
        )
    finally:
        server.stop()


def spawn_phases() -> None:
    from harness.sandbox import sandbox_missing

    why = sandbox_missing()
    if why:
        print(f"spawn phases not measured: {why}")
        return
    from harness.hub import Hub, wait_for
    from hpcgate.sandbox import Sandbox

    cluster = Sandbox()
    info = cluster.hold()
    names = ("connect + hub API forward", "submit over SSH", "address reported", "lab listening + tunnel", "routing", "total")
    phases: dict[str, list[float]] = {k: [] for k in names}
    try:
        with tempfile.TemporaryDirectory(prefix="hpcgate-bench-tunnels-") as tmp:
            hub = Hub(Path(tmp) / "hub", catalog=str(info.catalog)).start()
            try:
                for i in range(SPAWNS):
                    user = "alice" if i % 2 == 0 else "bob"
                    hub.create_user(user)
                    started = time.perf_counter()
                    r, events = hub.spawn_with_progress(user, {"system": "login"})
                    assert r.status_code in (201, 202), r.text
                    wait_for(lambda user=user: hub.user_model(user)["servers"].get("", {}).get("ready"), 120, "ready", interval=0.02)
                    total = time.perf_counter() - started
                    at = {}
                    for e in events:
                        m = re.match(r"\[\s*([\d.]+) s\] (\w+)", e.get("message", ""))
                        if m:
                            at.setdefault(m.group(2), float(m.group(1)))
                    phases["connect + hub API forward"].append(at["Submitting"] - at.get("Connecting", 0.0))
                    phases["submit over SSH"].append(at["Submitted"] - at["Submitting"])
                    # hpcgate-singleuser reports its port before JupyterLab listens; the
                    # tunnel's probe then waits for the lab: that phase holds the lab's start
                    phases["address reported"].append(at["Server"] - at["Submitted"])
                    phases["lab listening + tunnel"].append(at["Tunnel"] - at["Server"])
                    phases["routing"].append(total - at["Tunnel"])
                    phases["total"].append(total)
                    hub.stop_server(user)
            finally:
                hub.stop()
    finally:
        cluster.release()
    table(
        f"Spawn on the sandbox login node (kind ssh), median of {SPAWNS}; first spawn opens the tunnel connection",
        ["phase", "median s", "first s"],
        [[k, median(v), v[0]] for k, v in phases.items()],
    )


def run() -> None:
    if os.geteuid() != 0:
        print("bench_tunnels needs root (it creates test accounts and runs sshd); not measured")
        return
    with running_sshd() as sshd:
        throughput_by_design(sshd, str(sshd.dir))
        throughput_and_memory(sshd, str(sshd.dir))
    spawn_phases()
