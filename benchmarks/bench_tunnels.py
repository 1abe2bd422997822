"""Tunnels: hpcgate's TunnelManager vs OpenSSH ``ssh -L``, side by side in one run.

1. Throughput: a 500 MiB HTTP download (curl) through hpcgate's forward (the
   TunnelManager: an OpenSSH master carrying connections from the hub's port), through
   asyncssh's own forward (the previous data path) and through ``ssh -N -L``, same
   sshd, same account, same cipher (chacha20-poly1305 and aes256-gcm), interleaved
   rounds; the CPU time the client-side processes spent per download (hub process +
   master; asyncssh's process; ssh -L), less disturbed by a busy machine than the
   wall time; the time to the first byte of a small GET on a new connection beside it.
2. Memory (PSS, shared pages split fairly): growth of the hub-side process per forward
   with 200 forwards on one connection (and its one master), vs one ``ssh -L`` process
   per forward (as a tunnel service built on OpenSSH runs).
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
        wait_port(self.port)  # it reports its port before it listens
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


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def interleaved_downloads(
    ports: dict[str, int], pids: dict[str, tuple[int, ...]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``rounds`` interleaved ``MIB`` downloads through each design's port (after a 16 MiB
    warm-up each): seconds and the CPU seconds of that design's client-side ``pids``, per
    download, by design."""
    times: dict[str, list[float]] = {k: [] for k in ports}
    cpu: dict[str, list[float]] = {k: [] for k in ports}
    for port in ports.values():
        curl_seconds(port, 16)
    for _ in range(rounds):
        for name, port in ports.items():
            before = cpu_seconds(*pids[name])
            times[name].append(curl_seconds(port, MIB))
            cpu[name].append(cpu_seconds(*pids[name]) - before)
    return times, cpu


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
    """The TunnelManager in a process of its own, as in the hub (its loop serves only it);
    its OpenSSH master is its child."""

    CODE = r"""
import asyncio, gc, json, sys, tracemalloc
from hpcgate.catalog import System
from hpcgate.remote.tunnels import TunnelManager
async def main():
    system = System.model_validate(json.loads(sys.argv[1]))
    manager = TunnelManager(state_dir=sys.argv[2], ciphers=sys.argv[5])
    dest_port, count = int(sys.argv[3]), int(sys.argv[4])
    before = None
    ports = []
    heap = 0
    for i in range(count):
        ports.append(await manager.open_forward("bench", system, f"k{i}", "127.0.0.1", dest_port, timeout=30))
        if i == 0:
            before = open("/proc/self/smaps_rollup").read()
            if count > 1:
                gc.collect()
                tracemalloc.start()
    if count > 1:
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    master = manager.get("bench").master_pid
    print(json.dumps({"ports": ports, "master": master, "status_after_first": before, "heap": heap}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

    def __init__(self, system_data: dict, state_dir: str, dest_port: int, count: int, cipher: str = ""):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, json.dumps(system_data), state_dir, str(dest_port), str(count), cipher],
            stdout=subprocess.PIPE, text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()  # the master ends with it (parent death signal)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{self.info['master']}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class AsyncsshProcess:
    """The previous data path, for comparison: asyncssh's own local forward (the bytes
    copied and encrypted in Python), in a process of its own."""

    CODE = r"""
import asyncio, json, sys
import asyncssh
async def main():
    t = json.loads(sys.argv[1])
    conn = await asyncssh.connect(
        t["host"], port=t["port"], username=t["username"], client_keys=[t["key_path"]],
        known_hosts=t["known_hosts"], encryption_algs=[sys.argv[3]], config=[], agent_path=None,
    )
    listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", int(sys.argv[2]))
    print(json.dumps({"port": listener.get_port()}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

    def __init__(self, sshd: LoopbackSSHD, dest_port: int, cipher: str):
        target = {
            "host": "127.0.0.1", "port": sshd.port, "username": TUNNEL_USER,
            "key_path": str(sshd.keys[TUNNEL_USER]), "known_hosts": str(sshd.known_hosts),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, json.dumps(target), str(dest_port), cipher], stdout=subprocess.PIPE, text=True
        )
        self.info = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com")
FRESH = int(os.environ.get("HPCGATE_BENCH_TUNNEL_FRESH", "200"))


def first_byte_ms(port: int, count: int = FRESH) -> float:
    """Median ms from connect to the first byte of the answer of a small GET, each on a
    new TCP connection (a new channel each): the setup cost of a path. (The whole GET
    is not timed: the stand-in lab writes headers and body apart without TCP_NODELAY,
    and delayed ACKs then add up to 40 ms to either path at random.)"""
    import socket

    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            if not sock.recv(65536):
                raise RuntimeError(f"no answer through 127.0.0.1:{port}")
            times.append((time.perf_counter() - started) * 1000)
            while sock.recv(65536):
                pass
    return median(times)


OURS = "hpcgate TunnelManager (OpenSSH master, hub-owned port)"
ASYNCSSH = "asyncssh forward_local_port (the previous data path)"
SSH_L = "ssh -L (OpenSSH)"


def throughput_by_design(sshd: LoopbackSSHD, tmp: str) -> None:
    """Each tunnel design against ``ssh -L`` with the same cipher, interleaved rounds."""
    server = BlobServer()
    dest = server.port
    rounds = int(os.environ.get("HPCGATE_BENCH_TUNNEL_ROUNDS", "5"))
    try:
        for cipher in CIPHERS:
            ours = TunnelProcess(sshd.system_data(), tmp, dest, 1, cipher)
            theirs = AsyncsshProcess(sshd, dest, cipher)
            ssh_port = free_port()
            ssh = subprocess.Popen(ssh_argv(sshd, cipher, "-L", f"127.0.0.1:{ssh_port}:127.0.0.1:{dest}"))
            try:
                wait_port(ssh_port)
                ports = {OURS: ours.info["ports"][0], ASYNCSSH: theirs.info["port"], SSH_L: ssh_port}
                # the client-side processes of each design (sshd's side is the same for all)
                pids = {OURS: (ours.proc.pid, ours.info["master"]), ASYNCSSH: (theirs.proc.pid,), SSH_L: (ssh.pid,)}
                times, cpu = interleaved_downloads(ports, pids, rounds)
                first: dict[str, float] = {}
                for name, port in ports.items():
                    first[name] = first_byte_ms(port)
                direct = curl_seconds(dest, MIB)
            finally:
                ssh.kill()
                ssh.wait()
                ours.close()
                theirs.close()
            # best of the rounds: the machine is shared, the minimum is the least disturbed
            t = min(times[SSH_L])
            per_round = [ratio(tl, to) for to, tl in zip(times[OURS], times[SSH_L], strict=True)]
            table(
                f"{MIB} MiB download over SSH to 127.0.0.1, cipher {cipher}, best of {rounds} interleaved rounds",
                ["design", "seconds", "MiB/s", "speed vs ssh -L", "client CPU s (median)", "CPU ssh -L / this",
                 f"new connection, first byte ms (median of {FRESH})", "ssh -L / this"],
                [
                    [name, min(v), MIB / min(v), ratio(t, min(v)), median(cpu[name]),
                     ratio(median(cpu[SSH_L]), median(cpu[name])), first[name], ratio(first[SSH_L], first[name])]
                    for name, v in times.items()
                ]
                + [["direct, no tunnel (ceiling)", direct, MIB / direct, ratio(t, direct), "", "", "", ""]],
            )
            middle = ratio(median(times[SSH_L]), median(times[OURS]))
            print(f"hpcgate vs ssh -L, round by round ({cipher}): {', '.join(per_round)}; medians: {middle}")
    finally:
        server.stop()


def memory_per_forward(sshd: LoopbackSSHD, tmp: str) -> None:
    """The hub's memory per forward with FORWARDS forwards on one master, vs one
    ``ssh -L`` process per forward (as a tunnel service built on OpenSSH runs)."""
    server = BlobServer()
    dest = server.port
    try:
        data = sshd.system_data()
        many = TunnelProcess(data, tmp, dest, FORWARDS)
        try:
            after_first = next(
                int(line.split()[1]) for line in many.info["status_after_first"].splitlines() if line.startswith("Pss:")
            )
            ok = sum(1 for p in many.info["ports"][:20] if curl_seconds(p, 1) > 0)
            total = pss_kib(many.proc.pid)
            heap = many.info["heap"] / max(FORWARDS - 1, 1)
            master = pss_kib(many.info["master"])
        finally:
            many.close()
        per_forward_ours = (total - after_first) / max(FORWARDS - 1, 1)
        procs: list[subprocess.Popen] = []
        cipher = CIPHERS[0]
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
                ["hpcgate: hub process, growth per forward", per_forward_ours, total / 1024,
                 ratio(per_forward_theirs, per_forward_ours)],
                ["hpcgate: hub's Python heap per forward (tracemalloc)", heap / 1024, "",
                 ratio(per_forward_theirs, heap / 1024)],
                ["hpcgate: its one ssh master (whole process)", master / FORWARDS, master / 1024,
                 ratio(per_forward_theirs, master / FORWARDS)],
                [f"ssh -L: {FORWARDS} processes", per_forward_theirs, sum(ssh_rss) / 1024, "1.00x"],
            ],
        )
    finally:
        server.stop()


def spawn_phases() -> None:
    from harness.sandbox import sandbox_missing

    why = sandbox_missing() or ("HPCGATE_BENCH_SPAWNS is 0" if SPAWNS <= 0 else "")
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
        memory_per_forward(sshd, str(sshd.dir))
    spawn_phases()
