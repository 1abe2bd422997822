"""Slurm: controller load of status polling, and where a Slurm spawn's time goes.

Runs in the sandbox cluster (root; brought up if it is down, never taken down).

1. Controller load with ``SESSIONS`` sessions on one system, side by side in one run:
   hpcgate's StatusCache (one ``squeue`` for every job of the system per interval) and
   batchspawner's query pattern (one ``squeue -h -j <id> -o '%T %B'`` per session per
   interval, as the session's user). ``sdiag -r`` resets slurmctld's RPC counters before
   each phase; ``sdiag`` afterwards gives the RPCs by message type and by user. The jobs
   are ``sleep`` jobs submitted through the slurm backend. They run when compute1 has a
   CPU for each; otherwise (the sandbox node has 4) they are submitted held (pending),
   which costs a status query the same, and the table says so.
2. Spawn time on Slurm through a real hub, split into submit (POST -> "Submitted" event),
   queue wait (-> the job script runs, logged by a template that extends the built-in
   one), lab start (-> Jupyter Server logs "is running at"), tunnel (-> "Tunnel up"
   event; the forward opens once the lab listens) and routing (-> ready in JupyterHub's
   API). Log lines and events are compared on the one clock of this machine. No peer
   can run here to compare with: batchspawner needs the hub to reach node:port, which the
   sandbox's network (like most centres') does not allow.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import yaml

from harness.hub import Hub, wait_for
from hpcgate.catalog import UserInfo, load_catalog
from hpcgate.hub.backends.base import BackendContext, JobHandle, JobSpec
from hpcgate.hub.backends.slurm import SlurmBackend
from hpcgate.hub.status import StatusCache
from hpcgate.remote import SSHPool
from hpcgate.sandbox import Sandbox
from hpcgate.sandbox.catalog import catalog_data

from .report import median, ratio, table

SESSIONS = int(os.environ.get("HPCGATE_BENCH_SLURM_SESSIONS", "50"))
INTERVALS = int(os.environ.get("HPCGATE_BENCH_SLURM_INTERVALS", "5"))
SPAWNS = int(os.environ.get("HPCGATE_BENCH_SLURM_SPAWNS", "3"))
USERS = {"alice": "hpcg-alice", "bob": "hpcg-bob"}
SDIAG_LINE = re.compile(r"^\s+(\S+)\s+\(\s*\d+\)\s+count:(\d+)")

HELD_TEMPLATE = """{% extends "hpcgate/slurm-job.sh.j2" %}
{% block options %}{{ super() }}#SBATCH --hold
{% endblock %}
"""


def sdiag(sandbox: Sandbox, reset: bool = False) -> tuple[dict[str, int], dict[str, int]]:
    """slurmctld's RPC counts: (by message type, by user); ``reset`` zeroes them first."""
    if reset:
        sandbox.run_in("login", ["sdiag", "-r"])
        return {}, {}
    out = sandbox.run_in("login", ["sdiag"]).stdout
    by_type: dict[str, int] = {}
    by_user: dict[str, int] = {}
    section = None
    for line in out.splitlines():
        if line.startswith("Remote Procedure Call statistics by message type"):
            section = by_type
        elif line.startswith("Remote Procedure Call statistics by user"):
            section = by_user
        elif line and not line[0].isspace():
            section = None
        elif section is not None and (m := SDIAG_LINE.match(line)):
            section[m.group(1)] = int(m.group(2))
    return by_type, by_user


def node_cpus(sandbox: Sandbox) -> int:
    """CPUs of the cluster's nodes (each node once, whatever its partitions)."""
    out = sandbox.run_in("login", ["sinfo", "-h", "-N", "-o", "%N %c"]).stdout.splitlines()
    nodes = dict(line.split() for line in out if len(line.split()) == 2)
    return sum(int(c) for c in nodes.values() if c.isdigit())


async def submit_sessions(backend: SlurmBackend, catalog, held: bool) -> list[JobHandle]:
    async def one(i: int) -> JobHandle:
        user = list(USERS)[i % 2]
        request = catalog.validate(UserInfo(user), {"system": "cluster", "cpus": 1})
        spec = JobSpec(
            request=request,
            hub_user=user,
            account=USERS[user],
            server_name=f"bench{i}",
            env={"JUPYTERHUB_API_TOKEN": os.urandom(16).hex()},
            command=["sleep", "1800"],
            workdir="~",
        )
        return await backend.submit(spec)

    return list(await asyncio.gather(*(one(i) for i in range(SESSIONS))))


async def hpcgate_phase(backend: SlurmBackend, handles: list[JobHandle], interval: float) -> float:
    """Every session polls once per interval through one shared StatusCache."""
    now = [0.0]
    cache = StatusCache(backend, interval, clock=lambda: now[0])
    started = time.perf_counter()
    for _ in range(INTERVALS):
        await asyncio.gather(*(cache.get(h) for h in handles))
        now[0] += interval
    return time.perf_counter() - started


async def batchspawner_phase(backend: SlurmBackend, handles: list[JobHandle]) -> float:
    """batchspawner: each session runs its own ``squeue -h -j <id> -o '%T %B'`` per poll."""
    started = time.perf_counter()
    for _ in range(INTERVALS):
        results = await asyncio.gather(
            *(
                backend.remote.run(h.host, h.extra["account"], ["squeue", "-h", "-j", h.job_id, "-o", "%T %B"])
                for h in handles
            )
        )
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"squeue failed: {bad[0].stderr.strip()}")
    return time.perf_counter() - started


def rpcs(by_type: dict[str, int], by_user: dict[str, int]) -> tuple[int, int]:
    """(job-info RPCs, every RPC of the sandbox users), sdiag's own request left out."""
    job_info = by_type.get("REQUEST_JOB_INFO", 0) + by_type.get("REQUEST_JOB_INFO_SINGLE", 0)
    return job_info, sum(by_user.get(a, 0) for a in USERS.values())


async def load_benchmark(sandbox: Sandbox, tmp: Path) -> None:
    cpus = node_cpus(sandbox)
    held = cpus < SESSIONS
    catalog = load_catalog(sandbox.info.catalog)
    system = catalog.systems["cluster"]
    if held:
        template = tmp / "held.sh.j2"
        template.write_text(HELD_TEMPLATE)
        system = system.model_copy(update={"template": str(template)})
    backend = SlurmBackend("cluster", system, BackendContext(state_dir=str(tmp)), pool=SSHPool(8))
    handles: list[JobHandle] = []
    try:
        handles = await submit_sessions(backend, catalog, held)
        if not held:
            wait_for(
                lambda: sandbox.run_in("login", ["squeue", "-h", "-t", "R", "-o", "%i"]).stdout.count("\n") >= SESSIONS,
                120,
                "all sessions to run",
            )
        interval = system.status_interval
        sdiag(sandbox, reset=True)
        ours_s = await hpcgate_phase(backend, handles, interval)
        ours = rpcs(*sdiag(sandbox))
        sdiag(sandbox, reset=True)
        theirs_s = await batchspawner_phase(backend, handles)
        theirs = rpcs(*sdiag(sandbox))
    finally:
        # through the backend: it also removes each job's environment file
        await asyncio.gather(*(backend.cancel(h) for h in handles))
        await backend.close()
    state = "held (pending)" if held else "running"
    table(
        f"slurmctld load: {SESSIONS} sessions ({state}; compute1 has {cpus} CPUs), {INTERVALS} poll intervals",
        ["pattern", "job-info RPCs / interval", "all user RPCs / interval", "squeue runs / interval", "wall s / interval"],
        [
            ["hpcgate StatusCache", ours[0] / INTERVALS, ours[1] / INTERVALS, 1.0, ours_s / INTERVALS],
            ["batchspawner (squeue per session)", theirs[0] / INTERVALS, theirs[1] / INTERVALS, float(SESSIONS), theirs_s / INTERVALS],
            ["ratio (hpcgate / batchspawner)", ratio(ours[0], theirs[0]), ratio(ours[1], theirs[1]), ratio(1, SESSIONS), ratio(ours_s, theirs_s)],
        ],
    )


# --- spawn time -------------------------------------------------------------------------

#: Extends the built-in template: the job logs when it starts (epoch seconds).
TIMED_TEMPLATE = """{% extends "hpcgate/slurm-job.sh.j2" %}
{% block setup %}echo "hpcgate-bench: job started at $(date +%s.%N)" >&2
{{ super() }}{% endblock %}
"""
JOB_STARTED = re.compile(r"hpcgate-bench: job started at ([0-9.]+)")
LAB_LISTENING = re.compile(r"^\[I (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ServerApp\] Jupyter Server \S+ is running at", re.M)


def job_times(sandbox: Sandbox, job_id: str) -> tuple[float, float]:
    """(job start, lab listening) as epoch seconds, from the job's log on the shared home."""
    home = sandbox.run_in("login", ["sh", "-c", "echo $HOME"], user=USERS["alice"]).stdout.strip()
    text = Path(home, ".hpcgate", "logs", f"slurm-{job_id}.log").read_text()
    started = JOB_STARTED.search(text)
    listening = LAB_LISTENING.search(text)
    if not started or not listening:
        raise RuntimeError(f"job {job_id}'s log lacks the start or listening line:\n{text[-2000:]}")
    stamp = time.mktime(time.strptime(listening.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float("0" + listening.group(1)[19:])
    return float(started.group(1)), stamp


MARKS = (
    ("submitted", "Submitted: job"),
    ("running", "Running on"),
    ("address", "Server started on"),
    ("tunnel", "Tunnel up"),
)


def timed_spawn(hub: Hub, user: str) -> dict[str, float]:
    """Seconds from the POST to each progress mark (arrival times) and to ready."""
    hub.create_user(user)
    marks: dict[str, float] = {}
    started = time.time()
    result: dict[str, object] = {}

    def post() -> None:
        result["r"] = hub.request("POST", f"/hub/api/users/{user}/server", json={"user_options": {"system": "cluster"}})

    thread = threading.Thread(target=post)
    thread.start()
    wait_for(lambda: hub.user_model(user)["servers"].get("", {}).get("pending") == "spawn" or not thread.is_alive(), 60,
             "the spawn to be pending", interval=0.01)
    with hub.get(f"/hub/api/users/{user}/server/progress", stream=True, timeout=120) as r:
        for line in r.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            now = time.time() - started
            for name, text in MARKS:
                if text in line and name not in marks:
                    marks[name] = now
                    if name == "submitted":
                        job_id = re.search(r"Submitted: job (\d+)", line).group(1)
            if '"ready": true' in line or '"failed": true' in line:
                break
    thread.join()
    wait_for(lambda: hub.user_model(user)["servers"].get("", {}).get("ready"), 60, "ready", interval=0.01)
    marks["ready"] = time.time() - started
    hub.stop_server(user)
    job_start, lab_listening = job_times(hub.sandbox, job_id)
    marks["job_start"], marks["lab_listening"] = job_start - started, lab_listening - started
    missing = [name for name, _ in MARKS if name not in marks]
    if missing:
        raise RuntimeError(f"progress events missing: {missing}")
    return marks


def spawn_benchmark(sandbox: Sandbox, tmp: Path) -> None:
    template = tmp / "timed.sh.j2"
    template.write_text(TIMED_TEMPLATE)
    data = catalog_data(sandbox.layout)
    data["systems"]["cluster"]["template"] = str(template)
    catalog = tmp / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(data, sort_keys=False))
    extra = "c.HPCSpawner.progress_poll_interval = 0.5\n"
    hub = Hub(tmp / "hub", catalog=str(catalog), extra=extra).start()
    hub.sandbox = sandbox
    runs = []
    try:
        timed_spawn(hub, "alice")  # warm-up: SSH connections, tunnel, hub API forward
        for _ in range(SPAWNS):
            runs.append(timed_spawn(hub, "alice"))
    finally:
        hub.stop()

    def phase(a: str | None, b: str) -> float:
        return median([r[b] - (r[a] if a else 0.0) for r in runs])

    rows = [
        ["submit (POST -> sbatch accepted)", phase(None, "submitted")],
        ["queue wait (sbatch accepted -> job script runs)", phase("submitted", "job_start")],
        ["lab start (job runs -> JupyterLab listens)", phase("job_start", "lab_listening")],
        ["tunnel (JupyterLab listens -> forward up)", phase("lab_listening", "tunnel")],
        ["routing (forward up -> ready in the hub API)", phase("tunnel", "ready")],
        ["total (POST -> ready)", phase(None, "ready")],
    ]
    table(f"Slurm spawn, median of {SPAWNS} (after one warm-up), seconds", ["phase", "seconds"], rows)


def run() -> None:
    sandbox = Sandbox()
    sandbox.hold()  # released below: a sandbox the benchmark brought up goes down again
    try:
        with tempfile.TemporaryDirectory(prefix="hpcgate-bench-slurm-") as tmp:
            asyncio.run(load_benchmark(sandbox, Path(tmp)))
            spawn_benchmark(sandbox, Path(tmp))
    finally:
        sandbox.release()
