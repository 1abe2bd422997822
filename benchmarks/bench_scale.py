"""Scale: one hub with ``SERVERS`` running labs across the sandbox's SSH and Slurm systems.

Runs in the sandbox (root), brought up cold with enough Slurm capacity for one-CPU jobs
(compute1 declares ``SERVERS`` + 4 CPUs, ``SlurmdParameters=config_overrides``); a
sandbox that another session holds is waited for to go down (``HPCGATE_BENCH_SCALE_WAIT_DOWN``
s), never measured with too few CPUs. ``SIGTERM`` ends a run cleanly (the hub stops its
servers, the sandbox is released). Wrap the run in
``flock /tmp/hpcgate-sandbox.lock``; it is bounded by ``HPCGATE_BENCH_SCALE_BUDGET``
seconds of spawning.

What runs: a real hub (``hpcgate up``), ``SERVERS`` hub users u000... (mapped to the
sandbox accounts hpcg-alice/hpcg-bob by a map file), each one real lab: hpcgate-singleuser
+ Jupyter Server with hpcgate.lab only (``jpserver_extensions`` switches the JupyterLab
frontend, LSP, terminals, lmod, resource-usage off: the lightest lab that is still
hpcgate's); even users on ``login`` (kind ssh), odd users on ``cluster`` (kind slurm).

Reported side by side:
1. spawn POST -> ready: ``SINGLES`` single spawns vs the ``STORM`` spawns of one storm
   of concurrent spawns (p50/p99), the rest spawned ``BATCH`` at a time;
2. steady state with all running: hub CPU (% of one core, /proc over ``STEADY`` s) and
   RSS; the tunnels' SSH connections from the hub and their forwards;
3. slurmctld RPCs per minute (sdiag) of hpcgate vs batchspawner's pattern (one
   ``squeue -j`` per Slurm server per interval, run for real) at the same count;
4. configurable-http-proxy route-add latency with every route present;
5. a py-spy profile of the hub during the storm and at steady state (top functions).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from harness.hub import Hub
from hpcgate.sandbox import Sandbox
from hpcgate.sandbox import layout as L
from hpcgate.sandbox.catalog import catalog_data

from .bench_slurm import sdiag
from .report import median, percentile, ratio, table

SERVERS = int(os.environ.get("HPCGATE_BENCH_SCALE_SERVERS", "200"))
STORM = int(os.environ.get("HPCGATE_BENCH_SCALE_STORM", "50"))
SINGLES = int(os.environ.get("HPCGATE_BENCH_SCALE_SINGLES", "4"))
BATCH = int(os.environ.get("HPCGATE_BENCH_SCALE_BATCH", "10"))
STEADY = float(os.environ.get("HPCGATE_BENCH_SCALE_STEADY", "60"))
BUDGET = float(os.environ.get("HPCGATE_BENCH_SCALE_BUDGET", "600"))
#: nice value of the sandbox's node daemons (slurmd, the login node's sshd) and so of the
#: labs, job steps and login sessions they start: models compute/login nodes that do not
#: share the hub's cores (here all share 2); 0 runs them at the hub's priority
NODE_NICE = int(os.environ.get("HPCGATE_BENCH_SCALE_NODE_NICE", "0"))
#: cpu.shares of the cgroup all node processes share (a process at nice 0 weighs 1024): 0 = none
NODE_CPU_SHARES = int(os.environ.get("HPCGATE_BENCH_SCALE_NODE_CPU_SHARES", "64"))
#: HPCGATE_BENCH_SCALE_PROFILE_IDLE=1: profiles include waiting threads (py-spy --idle)
PROFILE_IDLE = os.environ.get("HPCGATE_BENCH_SCALE_PROFILE_IDLE", "") == "1"
STORM_PROFILE = float(os.environ.get("HPCGATE_BENCH_SCALE_STORM_PROFILE", "60"))  # seconds of py-spy from the storm's start
LIGHT = {
    "jupyterlab": False, "jupyter_lsp": False, "jupyter_server_terminals": False,
    "jupyterlmod": False, "jupyter_resource_usage": False, "notebook_shim": False, "hpcgate.lab": True,
}
EXTRA = """
c.HPCSpawner.args = [{light!r}]
c.HPCSpawner.default_url = "/api/status"
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
# the spawn POST answers when the server is ready (201): no polling of the hub needed
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 300}}
"""
#: MiB of MemAvailable below which the benchmark stops starting servers (the machine is shared)
#: seconds to wait for a sandbox that another session holds to go down
WAIT_DOWN = float(os.environ.get("HPCGATE_BENCH_SCALE_WAIT_DOWN", "1200"))
MIN_FREE_MIB = int(os.environ.get("HPCGATE_BENCH_SCALE_MIN_FREE_MIB", "3072"))


def light_arg() -> str:
    """The lab's argument that switches every server extension but hpcgate.lab off."""
    return "--ServerApp.jpserver_extensions=" + repr(LIGHT)


def user(i: int) -> str:
    return f"u{i:03d}"


def system_of(i: int) -> str:
    return "login" if i % 2 == 0 else "cluster"


def write_catalog(lay: L.Layout, tmp: Path) -> Path:
    """The sandbox catalog with an account map for u000... (alternating accounts)."""
    data = catalog_data(lay)
    accounts = list(L.HUB_USERS.values())
    mapping = {user(i): accounts[i % 2] for i in range(SERVERS)}
    mapping.update(L.HUB_USERS)
    account_map = tmp / "accounts.yaml"
    account_map.write_text(yaml.safe_dump(mapping))
    for system in data["systems"].values():
        if system.get("accounts", {}).get("source") == "map_file":
            system["accounts"]["map_file"] = str(account_map)
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def options(i: int) -> dict:
    return {"system": system_of(i)}


class ReadyWatch:
    """One poller for every spawn: ``GET /hub/api/users`` every ``interval`` s, noting
    when each server turned ready (or vanished). Polling per spawn would load the hub
    with the benchmark's own requests (token hashing, a database commit each) and
    measure that instead of the spawns."""

    def __init__(self, hub: Hub, interval: float = 0.25):
        self.hub = hub
        self.interval = interval
        self.ready: dict[str, float] = {}
        self.gone: set[str] = set()
        self.waiting: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.waiting:
                continue
            try:
                users = self.hub.get("/hub/api/users", params={"state": "active", "limit": 1000}).json()
            except (OSError, ValueError):
                continue
            now = time.perf_counter()
            seen = {}
            for model in users if isinstance(users, list) else users.get("items", []):
                seen[model["name"]] = model.get("servers", {}).get("", {})
            for name in list(self.waiting):
                server = seen.get(name)
                if server and server.get("ready"):
                    self.ready[name] = now
                    self.waiting.discard(name)

    def wait(self, name: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in self.ready:
                return self.ready[name]
            time.sleep(0.05)
        self.waiting.discard(name)
        return None

    def stop(self) -> None:
        self._stop.set()


def timed_spawn(hub: Hub, i: int, watch: ReadyWatch) -> tuple[float, str]:
    """POST -> ready in seconds, or (nan, why). The POST answers 201 once the server is
    ready (``slow_spawn_timeout`` above); only a 202 falls back to the shared poller."""
    name = user(i)
    hub.create_user(name)
    started = time.perf_counter()
    r = hub.request("POST", f"/hub/api/users/{name}/server", json={"user_options": options(i)}, timeout=400)
    if r.status_code == 201:
        return time.perf_counter() - started, ""
    if r.status_code != 202:
        return float("nan"), f"{name}: {r.status_code} {r.text[:200]}"
    watch.waiting.add(name)
    ready = watch.wait(name, 300)
    if ready is None:
        return float("nan"), f"{name}: not ready after 300 s"
    return ready - started, ""


_LOG_LINE = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \w+ [^\]]*\] (.*)$")


def lab_startups(log: Path) -> dict[str, float]:
    """Seconds each server's lab took to start on its node, from the hub's log.

    From the moment the lab's wrapper reported its address (``<user>: Server started on``,
    the job is running there) to the lab's first activity report
    (``POST /hub/api/users/<user>/activity``, sent once its Jupyter server runs): the
    lab's own start-up, which hpcgate does not control. A spawn's overhead is its
    POST -> ready time minus this: submission, scheduling, the tunnel and its probe, the
    hub's own checks and the proxy route.
    """
    started: dict[str, float] = {}
    up: dict[str, float] = {}
    activity = re.compile(r"POST /hub/api/users/(u\d+)/activity ")
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        text = m.group(2)
        name, sep, rest = text.partition(": ")
        if sep and rest.startswith("Server started on") and name not in started:
            started[name] = when
            continue
        a = activity.search(text)
        if a and a.group(1) in started and a.group(1) not in up:
            up[a.group(1)] = when
    return {name: up[name] - started[name] for name in up}


def node_priority_line(cluster: Sandbox) -> str:
    """What the node daemons run at (read from /proc: what their jobs and sessions inherit)."""
    seen = []
    for daemon in ("slurmd", "sshd"):
        pid = cluster.daemon_pids().get(daemon)
        seen.append(f"{daemon} nice {_nice(pid)}, {_cpu_group(pid)}" if pid else f"{daemon} not running")
    what = "; ".join(seen)
    if NODE_NICE or NODE_CPU_SHARES:
        return (f"(node processes model separate compute and login nodes: {what}; the hub, its proxy and "
                "its ssh masters at nice 0 outside that group; HPCGATE_BENCH_SCALE_NODE_CPU_SHARES=0 "
                "HPCGATE_BENCH_SCALE_NODE_NICE=0 runs them all on the same cores at the same priority)")
    return f"(node processes run at the hub's priority, all on the same cores: {what})"


def _cpu_group(pid: int) -> str:
    """The cgroup (cpu controller) of ``pid`` and its weight."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(",") or controllers == "":
                if path == "/":
                    return "cgroup /"
                group = L.node_cgroup()
                if group is None:
                    return f"cgroup {path}"
                weight = (group[0].parent / path.lstrip("/") / group[1]).read_text().strip()
                return f"cgroup {path} {group[1]} {weight}"
    except (OSError, ValueError):
        pass
    return "cgroup unknown"


def _nice(pid: int) -> int | str:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return "unknown"


#: (event, what marks it in the hub's log) of one spawn, in order; the time of an HTTP
#: request's log line minus its duration is when the request arrived
_EVENTS = (
    ("post", re.compile(r"^20[12] POST /hub/api/users/(u\d+)/server .* ([\d.]+)ms$")),
    ("submitting", re.compile(r"^(u\d+): Submitting to ")),
    ("submitted", re.compile(r"^(u\d+): Submitted: ")),
    ("reported", re.compile(r"^204 POST /hub/api/hpcgate/ready \((u\d+)@.* ([\d.]+)ms$")),
    ("started", re.compile(r"^(u\d+): Server started on ")),
    ("activity", re.compile(r"^\d+ POST /hub/api/users/(u\d+)/activity ")),
    ("tunnel", re.compile(r"^(u\d+): Tunnel up: ")),
    ("took", re.compile(r"^User (u\d+) took [\d.]+ seconds to start")),
    ("done", re.compile(r"^201 POST /hub/api/users/(u\d+)/server ")),
)
#: (from, to, what happens in between) as the phase table prints them
PHASES = (
    ("post", "submitting", "hub: checks, hub API forward"),
    ("submitting", "submitted", "submission (sbatch / start over SSH)"),
    ("submitted", "reported", "queue, job start, wrapper reports"),
    ("reported", "started", "hub: report -> 'Server started'"),
    ("started", "activity", "lab start-up (not overhead)"),
    ("activity", "tunnel", "tunnel probe after the lab is up"),
    ("tunnel", "took", "start() returns, JupyterHub's HTTP check"),
    ("took", "done", "route add, answer"),
)


def spawn_events(log: Path) -> dict[str, dict[str, float]]:
    """user -> event -> time (the first of each kind) of each spawn, from the hub's log."""
    events: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        text = m.group(2)
        for event, pattern in _EVENTS:
            e = pattern.match(text)
            if e is None:
                continue
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if event in ("post", "reported"):
                when -= float(e.group(2)) / 1000
            events.setdefault(e.group(1), {}).setdefault(event, when)
            if event == "post":
                events[e.group(1)].setdefault("done", when + float(e.group(2)) / 1000)
            break
    return events


def phase_sums(hub: Hub) -> dict[str, tuple[float, float]]:
    """phase -> (sum of seconds, count) of hpcgate_spawn_phase_seconds over every system."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, list[float]] = {}
    try:
        text = hub.get("/hub/metrics").text
    except OSError:
        return {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("hpcgate_spawn_phase_seconds_sum", "hpcgate_spawn_phase_seconds_count"):
                entry = sums.setdefault(sample.labels.get("phase", "?"), [0.0, 0.0])
                entry[0 if sample.name.endswith("_sum") else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in sums.items()}


def phase_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean seconds per phase of the spawns between two :func:`phase_sums`."""
    means = {}
    for phase, (total, count) in after.items():
        total0, count0 = before.get(phase, (0.0, 0.0))
        if count > count0:
            means[phase] = (total - total0) / (count - count0)
    return means


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hub_ssh_connections(pid: int) -> int:
    out = subprocess.run(check=False, args=["ss", "-tnpH", "state", "established", f"dst {L.LOGIN_ADDR}"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line and f":{L.SSH_PORT} " in line + " ")


def profile(pid: int, seconds: float, out: Path) -> list[tuple[str, float]]:
    """py-spy record (raw collapsed stacks) of ``pid`` for ``seconds``: top own-time frames."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return [("py-spy not installed (pip install py-spy)", 0.0)]
    subprocess.run(
        [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
         "--rate", "50", "--nonblocking", "--output", str(out),
         # --idle: also the samples where a thread waits (a blocked event loop shows where)
         *(["--idle"] if PROFILE_IDLE else [])],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    own: dict[str, int] = {}
    total = 0
    try:
        lines = out.read_text().splitlines()
    except OSError:
        return [("py-spy wrote no profile", 0.0)]
    incl: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if "hpcgate" in frame or "jupyterhub" in frame:
                incl[frame] = incl.get(frame, 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:8]
    top_incl = sorted(incl.items(), key=lambda kv: -kv[1])[:8]
    return [(f"self  {k}", 100 * v / max(total, 1)) for k, v in top] + [
        (f"incl  {k}", 100 * v / max(total, 1)) for k, v in top_incl
    ]


def route_add_ms(hub: Hub, chp_pid: int, rounds: int = 20) -> float:
    """Median ms of one POST /api/routes to configurable-http-proxy with every route in it.

    The proxy's API token is read from its own environment (our child process)."""
    import requests

    env = dict(
        item.split("=", 1) for item in Path(f"/proc/{chp_pid}/environ").read_text().split("\0") if "=" in item
    )
    argv = Path(f"/proc/{chp_pid}/cmdline").read_text().split("\0")
    api_port = argv[argv.index("--api-port") + 1] if "--api-port" in argv else "8001"
    base = f"http://127.0.0.1:{api_port}/api/routes"
    headers = {"Authorization": f"token {env.get('CONFIGPROXY_AUTH_TOKEN', '')}"}
    routes = len(requests.get(base, headers=headers, timeout=30).json())
    times = []
    for k in range(rounds):
        started = time.perf_counter()
        r = requests.post(f"{base}/bench-route-{k}", json={"target": "http://127.0.0.1:9"}, headers=headers, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 201, r.text
        requests.delete(f"{base}/bench-route-{k}", headers=headers, timeout=30)
    print(f"(route adds measured with {routes} routes in the proxy)")
    return median(times)


def batchspawner_rpcs_per_min(sandbox: Sandbox, jobs: list[tuple[str, str]], interval: float) -> float:
    """batchspawner's pattern for real: each Slurm server's user runs ``squeue -j`` once
    per interval; one interval's RPCs, per minute."""
    sdiag(sandbox, reset=True)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(
            lambda job: sandbox.run_in("login", ["squeue", "-h", "-j", job[0], "-o", "%T %B"], user=job[1], check=False),
            jobs,
        ))
    rest = interval - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)
    _, by_user = sdiag(sandbox)
    # hpcgate's own queries run meanwhile as the same accounts: the caller subtracts them
    return sum(by_user.get(a, 0) for a in L.HUB_USERS.values()) * 60 / max(interval, time.monotonic() - started)


def hub_ssh_children(pid: int) -> tuple[int, float]:
    """The hub's ssh child processes (OpenSSH tunnel masters, if any) and their RSS in MiB."""
    out = subprocess.run(check=False, args=["pgrep", "-P", str(pid), "-x", "ssh"], capture_output=True, text=True).stdout.split()
    return len(out), sum(rss_mib(int(p)) for p in out if Path(f"/proc/{p}").exists())


def _stats(values: list[float]) -> tuple[float, float]:
    nan = float("nan")
    return (median(values), percentile(values, 99)) if values else (nan, nan)


def run() -> None:
    from hpcgate.sandbox import packages

    why = "it needs root (namespaces, accounts, daemons)" if os.geteuid() != 0 else ""
    if not why and packages.missing():
        why = f"missing Debian packages {', '.join(packages.missing())} (scripts/install-system-deps.sh installs them)"
    if why:
        print(f"scale not measured: {why}")
        return
    lay = L.Layout(node_cpus=SERVERS + 4, node_memory_mb=(SERVERS + 4) * 1024, node_nice=NODE_NICE,
                      node_cpu_shares=NODE_CPU_SHARES)
    cluster = Sandbox(lay)
    waited = time.monotonic()
    while cluster.is_up() and time.monotonic() - waited < WAIT_DOWN:
        # another session holds it, with compute1's usual CPUs: wait for it to go down
        time.sleep(10)
    if cluster.is_up():
        print(f"scale not measured: the sandbox stayed up (held by another session) for {WAIT_DOWN:.0f} s; "
              f"compute1 needs {SERVERS + 4} CPUs, declared only when the sandbox comes up")
        return
    if time.monotonic() - waited > 1:
        print(f"(waited {time.monotonic() - waited:.0f} s for the sandbox to go down)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="hpcgate-bench-scale-"))
    catalog = write_catalog(lay, tmp)
    hub = Hub(tmp / "hub", catalog=str(catalog), extra=EXTRA.format(light=light_arg()), keep_servers=False)
    cluster.hold()  # released in the finally below, whatever happens after this line
    print(node_priority_line(cluster), flush=True)
    raw: dict[str, float] = {}  # user -> POST -> ready, seconds
    phase: dict[str, list[str]] = {"single": [], "fill": [], "storm": []}
    lost: list[str] = []
    stopped_early = ""

    def spawn(k: int, where: str) -> None:
        t, err = timed_spawn(hub, k, watch)
        if err:
            lost.append(err)
        else:
            raw[user(k)] = t
            phase[where].append(user(k))

    # SIGTERM (a background job ignores SIGINT) ends the run through the finally below:
    # the hub stops every server it started, the sandbox is released
    def _interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupted)
    pools: list[concurrent.futures.ThreadPoolExecutor] = []
    try:
        hub.start()
        watch = ReadyWatch(hub)
        hub_pid = int((tmp / "hub" / "jupyterhub.pid").read_text())
        rss_idle = rss_mib(hub_pid)
        deadline = time.monotonic() + BUDGET
        avail_start = mem_available_mib()
        i = 0
        metrics_start = phase_sums(hub)
        for _ in range(SINGLES):
            spawn(i, "single")
            i += 1
        metrics_single = phase_sums(hub)
        target = max(SERVERS - STORM, i)
        pool = concurrent.futures.ThreadPoolExecutor(BATCH)
        pools.append(pool)
        while i < target and time.monotonic() < deadline:
            # what one running server costs the machine so far (lab, job, sshd/slurmstepd)
            per_server = max(100.0, (avail_start - mem_available_mib()) / max(i, 1))
            if mem_available_mib() < MIN_FREE_MIB + (STORM + BATCH) * per_server:
                stopped_early = (
                    f"filling stopped at {i}: MemAvailable {mem_available_mib():.0f} MiB, "
                    f"{per_server:.0f} MiB per server, the storm's {STORM} kept within {MIN_FREE_MIB} MiB free"
                )
                break
            n = min(BATCH, target - i)
            list(pool.map(lambda k: spawn(k, "fill"), range(i, i + n)))
            i += n
        per_server = (avail_start - mem_available_mib()) / max(i, 1)
        print(f"(machine memory per running server: {per_server:.0f} MiB)", flush=True)
        print(f"(filled to {i} running in {BUDGET - (deadline - time.monotonic()):.0f} s, MemAvailable "
              f"{mem_available_mib():.0f} MiB; storm of {STORM} next) {stopped_early}", flush=True)
        storm_profile: list = []
        spy = threading.Thread(target=lambda: storm_profile.extend(profile(hub_pid, STORM_PROFILE, tmp / "storm.raw")))
        spy.start()
        metrics_storm0 = phase_sums(hub)
        c_storm0, t_storm0 = cpu_seconds(hub_pid), time.monotonic()
        pool = concurrent.futures.ThreadPoolExecutor(STORM)
        pools.append(pool)
        list(pool.map(lambda k: spawn(k, "storm"), range(i, i + STORM)))
        storm_cpu = 100 * (cpu_seconds(hub_pid) - c_storm0) / (time.monotonic() - t_storm0)
        storm_wall = time.monotonic() - t_storm0
        i += STORM
        metrics_storm = phase_sums(hub)
        spy.join()
        running = sum(1 for k in range(i) if hub.user_model(user(k))["servers"].get("", {}).get("ready"))
        print(f"({running} running, MemAvailable {mem_available_mib():.0f} MiB; steady state next)", flush=True)

        # steady state: nothing spawns; the hub polls, routes, keeps tunnels
        time.sleep(10)
        sdiag(cluster, reset=True)
        c0, t0 = cpu_seconds(hub_pid), time.monotonic()
        steady_profile = profile(hub_pid, STEADY, tmp / "steady.raw")
        c1, t1 = cpu_seconds(hub_pid), time.monotonic()
        by_type, by_user = sdiag(cluster)
        ours_rpm = sum(by_user.get(a, 0) for a in L.HUB_USERS.values()) * 60 / (t1 - t0)
        ours_job_info_rpm = (by_type.get("REQUEST_JOB_INFO", 0) + by_type.get("REQUEST_JOB_INFO_SINGLE", 0)) * 60 / (t1 - t0)
        cpu_pct = 100 * (c1 - c0) / (t1 - t0)
        rss = rss_mib(hub_pid)
        conns = hub_ssh_connections(hub_pid)
        ssh_procs, ssh_rss = hub_ssh_children(hub_pid)
        slurm_jobs = [
            tuple(line.split())
            for line in cluster.run_in("login", ["squeue", "-h", "-t", "R", "-o", "%i %u"]).stdout.splitlines()
            if line.strip()
        ]
        from hpcgate.catalog import load_catalog

        interval = load_catalog(catalog).systems["cluster"].status_interval
        theirs_rpm = batchspawner_rpcs_per_min(cluster, slurm_jobs, interval) - ours_rpm  # type: ignore[arg-type]
        chp = subprocess.run(check=False, args=["pgrep", "-P", str(hub_pid), "-f", "configurable-http-proxy"], capture_output=True, text=True).stdout.split()
        route_ms = route_add_ms(hub, int(chp[0])) if chp else float("nan")
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)  # their POSTs end when the hub stops
        if "watch" in locals():
            watch.stop()
        hub.stop(timeout=300)
        # jobs the hub did not cancel (none expected) are cancelled here: only this run's
        # (the accounts may have other sessions' jobs in a shared sandbox)
        ours = re.findall(r": Submitted: job (\d+)$", hub.log_tail(1 << 30), re.MULTILINE) if hub.log_path.exists() else []
        if ours:
            cluster.run_in("login", ["scancel", *ours], check=False)
        cluster.release()
    boot = lab_startups(hub.log_path)
    rows = []
    single_raw = _stats([raw[u] for u in phase["single"]])
    single_over = _stats([raw[u] - boot[u] for u in phase["single"] if u in boot])
    for where, label in (("single", "single (one at a time)"), ("fill", f"fill ({BATCH} at a time)"), ("storm", f"storm ({STORM} at once)")):
        names = phase[where]
        r50, r99 = _stats([raw[u] for u in names])
        o = [raw[u] - boot[u] for u in names if u in boot]
        o50, o99 = _stats(o)
        b50, b99 = _stats([boot[u] for u in names if u in boot])
        rows.append([
            label, len(names), r50, r99, ratio(r99, single_raw[0]) if names else "n/a",
            b50, b99, o50, o99, ratio(o99, single_over[0]) if o else "n/a",
        ])
    table(
        f"Spawn POST -> ready (s), raw and overhead (raw minus the lab's own start-up on its node, "
        f"from the hub's log: address reported -> the lab's first activity report); {running} of {SERVERS} running in the end",
        ["spawns", "n", "raw p50", "raw p99", "raw p99 / single p50", "lab start p50", "lab start p99",
         "overhead p50", "overhead p99", "overhead p99 / single p50"],
        rows,
    )
    print(f"(storm: {storm_wall:.1f} s wall, hub CPU {storm_cpu:.0f}% of one core during it)")
    events = spawn_events(hub.log_path)
    prow = []
    for a, b, what in PHASES:
        row: list = [f"{a} -> {b}: {what}"]
        for where in ("single", "storm"):
            row += list(_stats([events[u][b] - events[u][a] for u in phase[where] if a in events.get(u, {}) and b in events.get(u, {})]))
        prow.append(row + [ratio(row[4], row[1])])
    table(
        "Spawn phases from the hub's log (s): where single and storm spawns spend their time",
        ["phase", "single p50", "single p99", "storm p50", "storm p99", "storm p99 / single p50"],
        prow,
    )
    single_means, storm_means = phase_means(metrics_start, metrics_single), phase_means(metrics_storm0, metrics_storm)
    table(
        "hpcgate_spawn_phase_seconds (hub metrics): mean s per spawn",
        ["phase", "single", "storm", "storm / single"],
        [[k, single_means.get(k, float("nan")), storm_means.get(k, float("nan")), ratio(storm_means.get(k, float("nan")), single_means.get(k, float("nan")))]
         for k in ("submit", "queue_wait", "lab_start", "tunnel", "routing")],
    )
    if lost:
        print(f"LOST {len(lost)}: " + "; ".join(lost[:5]))
    if stopped_early:
        print(f"NOTE {stopped_early}")
    table(
        f"Hub at steady state with {running} running ({STEADY:.0f} s)",
        ["measure", "value", "target"],
        [
            ["hub CPU, % of one core", cpu_pct, "< 5"],
            ["hub RSS MiB (before the first spawn)", rss_idle, ""],
            ["hub RSS MiB", rss, ""],
            ["SSH connections from the hub (tunnels + command pool)", conns, "2 tunnels + 1 per account"],
            ["ssh processes of the hub (OpenSSH masters) and their RSS MiB", f"{ssh_procs} / {ssh_rss:.1f}", ""],
            ["CHP route add, ms (median of 20)", route_ms, ""],
        ],
    )
    table(
        f"slurmctld RPCs with {len(slurm_jobs)} Slurm servers running (status interval {interval:g} s)",
        ["pattern", "user RPCs / min", "user RPCs / interval", "job-info RPCs / min", "vs hpcgate"],
        [
            ["hpcgate StatusCache", ours_rpm, ours_rpm * interval / 60, ours_job_info_rpm, "1.00x"],
            ["batchspawner (squeue -j per server per interval)", theirs_rpm, theirs_rpm * interval / 60, "", ratio(theirs_rpm, ours_rpm)],
        ],
    )
    for name, prows in (("storm", storm_profile), ("steady state", steady_profile)):
        table(f"Hub profile ({name}, py-spy, % of samples)", ["frame", "%"], [[k, v] for k, v in prows])
    print(f"(profiles and the hub's log in {tmp})")
