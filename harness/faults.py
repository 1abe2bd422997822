"""Faults injected into a real hub + the sandbox, shared by tests/faults and the
``faults`` benchmark.

Every scenario function injects one fault, waits until every lab is usable again and
returns what it saw (timings in seconds, status codes) -- the tests assert on the
behaviour, the benchmark prints the timings. A lab counts as usable only when it
accepts a token created after the fault: labs cache the tokens they have checked, so
an old token would hide a hub API the lab cannot reach.

Users: ``alice`` runs her lab on the login node (kind ssh), ``bob`` his as a Slurm job
on compute1 (kind slurm); both reach the hub API only through the hub's remote
forwards on the jump host.
"""

from __future__ import annotations

import concurrent.futures
import os
import shlex
import signal
import time
from pathlib import Path

import requests
import yaml

from harness.hub import Hub, wait_for
from harness.sandbox import wait_job

#: hub user -> spawn options: one lab per kind of system
LABS = {
    "alice": {"system": "login", "partition": "interactive"},
    "bob": {"system": "cluster", "partition": "debug"},
}
ACCOUNTS = {"alice": "hpcg-alice", "bob": "hpcg-bob"}

HUB_EXTRA = """
c.HPCSpawner.start_timeout = 120
c.JupyterHub.init_spawners_timeout = 1
"""


ROOT = Path(__file__).resolve().parents[2]


def fault_catalog(sandbox, path: Path, lab_source: Path | None = None) -> Path:
    """The sandbox catalog, with the labs importing hpcgate from ``lab_source``
    (default: this checkout's ``src``). The sandbox's job venv may have been built from
    another checkout by whoever brought the sandbox up; the labs must run the code
    under test."""
    data = yaml.safe_load(Path(sandbox.info.catalog).read_text())
    source = lab_source or ROOT / "src"
    for system in data["systems"].values():
        system["setup"] = [*system.get("setup", []), f"export PYTHONPATH={shlex.quote(str(source))}"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_hub(state_dir: Path, catalog: str | Path, extra: str = "") -> Hub:
    return Hub(state_dir, catalog=str(catalog), extra=HUB_EXTRA + extra).start()


def spawn_labs(hub: Hub, users=tuple(LABS)) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        posted = list(pool.map(lambda u: hub.spawn(u, LABS[u]), users))
    assert all(r.status_code in (201, 202) for r in posted), [r.text for r in posted]
    for user in users:
        hub.wait_ready(user, timeout=150)


def fresh_token(hub: Hub, user: str) -> str:
    """A token of ``user`` that no lab has seen (created now, through the hub API)."""
    r = hub.request(
        "POST",
        f"/hub/api/users/{user}/tokens",
        json={"note": "fault test", "expires_in": 900, "scopes": [f"access:servers!user={user}"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def lab_answer(hub: Hub, user: str, token: str, timeout: float = 30) -> tuple[int, str]:
    """(status, body start) of the lab's api/status with ``token``; 0 if no answer."""
    try:
        r = requests.get(
            f"{hub.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}, timeout=timeout
        )
    except requests.RequestException as exc:
        return 0, str(exc)[:200]
    return r.status_code, r.text[:300]


def wait_labs_accept_fresh_tokens(hub: Hub, users, since: float, timeout: float = 90) -> dict:
    """Poll each lab (all at once) with a token made for this check until it answers 200.

    Returns ``{user: {"after": s since ``since``, "answers": [status, ...], "last": body}}``;
    a lab that never answered within ``timeout`` has ``after`` None.
    """

    def one(user: str) -> dict:
        token = fresh_token(hub, user)
        answers, last = [], ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, last = lab_answer(hub, user, token, timeout=max(1.0, deadline - time.monotonic()))
            answers.append(code)
            if code == 200:
                return {"after": time.monotonic() - since, "answers": answers, "last": last}
            time.sleep(0.05)
        return {"after": None, "answers": answers, "last": last}

    users = list(users)
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        return dict(zip(users, pool.map(one, users), strict=True))


def servers(hub: Hub) -> dict[str, dict]:
    """Each user's default server model as the hub reports it ({} if none)."""
    return {u: hub.user_model(u)["servers"].get("", {}) for u in LABS}


def routed_ports(hub: Hub) -> dict[str, int]:
    return {u: s["state"]["tunnel"]["local_port"] for u, s in servers(hub).items() if s}


# --- faults ---------------------------------------------------------------------------


def controller_outage(sandbox, hub: Hub, down_for: float = 8.0) -> dict:
    """slurmctld stopped for ``down_for`` s, then started with its saved state."""
    before = servers(hub)
    sandbox.stop_slurmctld()
    try:
        time.sleep(down_for)
        during = servers(hub)
    finally:
        sandbox.start_slurmctld(wait_idle=False)
    back = time.monotonic()
    labs = wait_labs_accept_fresh_tokens(hub, LABS, back)
    return {"before": before, "during": during, "labs": labs}


def sshd_outage(sandbox, hub: Hub, down_for: float = 6.0) -> dict:
    """The jump host's sshd and every session killed; started again after ``down_for`` s.

    Each lab is asked a few times first (the proxy keeps those connections alive). A
    request is sent to each lab while sshd is down (it is in flight during the
    reconnect). Right after sshd listens again, each lab gets a burst of four requests
    with a fresh token: ``first`` lists their answers (the first new connections on
    each tunnel).
    """
    lost = hub.log_tail(10**7).count("lost its connection to")
    # the proxy keeps idle keep-alive connections to each forward from these
    warm = {u: fresh_token(hub, u) for u in LABS}
    for _ in range(3):
        for user in LABS:
            lab_answer(hub, user, warm[user])
    sandbox.stop_sshd(sessions=True)
    in_flight = {}
    pool = concurrent.futures.ThreadPoolExecutor(len(LABS))
    try:
        wait_for(lambda: hub.log_tail(10**7).count("lost its connection to") >= lost + 2, 30,
                 "the hub to notice both lost tunnel connections")
        tokens = {u: fresh_token(hub, u) for u in LABS}
        in_flight = {u: pool.submit(lab_answer, hub, u, tokens[u], 60) for u in LABS}
        time.sleep(down_for)
    finally:
        sandbox.start_sshd()
    listening = time.monotonic()
    first_tokens = {u: fresh_token(hub, u) for u in LABS}
    # the first new connections on each tunnel: a burst of requests at once
    with concurrent.futures.ThreadPoolExecutor(4 * len(LABS)) as burst:
        asked = [(u, burst.submit(lab_answer, hub, u, first_tokens[u], 60)) for u in LABS for _ in range(4)]
        first = {u: [] for u in LABS}
        for user, answer in asked:
            first[user].append(answer.result())
    labs = wait_labs_accept_fresh_tokens(hub, LABS, listening)
    flight = {u: f.result() for u, f in in_flight.items()}
    pool.shutdown()
    return {"in_flight": flight, "first": first, "labs": labs}


def _kill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def hub_restart(hub: Hub, kind: str = "sigkill") -> dict:
    """The hub stopped (``sigkill``: hpcgate up, JupyterHub and its proxy killed with
    SIGKILL; ``sigterm``: a clean stop with --keep-servers) and started again."""
    before = routed_ports(hub)
    if kind == "sigkill":
        pids = [hub.proc.pid if hub.proc else None, _pid_file(hub.state_dir / "jupyterhub.pid"),
                _pid_file(hub.state_dir / "proxy.pid")]
        for pid in pids:
            _kill(pid)
        if hub.proc:
            hub.proc.wait(30)
        for pid in pids:
            wait_for(lambda pid=pid: not pid or not Path(f"/proc/{pid}").exists() or
                     "State:\tZ" in Path(f"/proc/{pid}/status").read_text(), 30, f"process {pid} to die")
        hub.proc = None
    else:
        hub.stop()
    started = time.monotonic()
    hub.start()
    answered = time.monotonic() - started
    labs = wait_labs_accept_fresh_tokens(hub, LABS, started)
    return {"before": before, "after": routed_ports(hub), "hub_answers": answered, "labs": labs}


def cancel_outside(sandbox, hub: Hub, user: str = "bob") -> dict:
    """``scancel`` of ``user``'s job as that user on the login node, not through the hub;
    how long until the hub reports the server stopped."""
    job = servers(hub)[user]["state"]["job"]["job_id"]
    sandbox.run_in("login", ["scancel", job], user=ACCOUNTS[user])
    cancelled = time.monotonic()
    wait_job(sandbox, job, timeout=60)
    ended = time.monotonic()
    wait_for(lambda: not hub.user_model(user)["servers"].get(""), 90, f"the hub to report {user}'s server stopped")
    reported = time.monotonic()
    return {"job": job, "scheduler_says": ended - cancelled, "hub_says": reported - cancelled,
            "after_scheduler": reported - ended}


def stop_everything(hub: Hub, sandbox) -> None:
    """Stop both labs and the hub; cancel any job of the sandbox users still queued."""
    from harness.sandbox import stop_hub_and_jobs

    stop_hub_and_jobs(hub, sandbox, ACCOUNTS)
