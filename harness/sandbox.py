"""The sandbox cluster from the tests' side: can it be built here, and the handles on it
that only tests and benchmarks use (cut the hub link, its Slurm jobs: list, wait for,
cancel with a hub's servers).

The tests' session fixture ``sandbox`` (tests/conftest.py) and the benchmarks build
their cluster only through :mod:`hpcgate.sandbox`.
"""

from __future__ import annotations

import os

from hpcgate.hub.backends.slurm.parse import FINAL_STATES
from hpcgate.sandbox import Sandbox, packages
from hpcgate.sandbox import layout as L
from hpcgate.sandbox.proc import run, tcp_open, wait_until


def sandbox_missing() -> str:
    """Why the sandbox cannot be built here, or ``""``."""
    if os.geteuid() != 0:
        return "the sandbox creates network namespaces, accounts and daemons: it needs root"
    missing = packages.missing()
    if missing:
        return (
            f"missing Debian packages {', '.join(missing)} (scripts/install-system-deps.sh or "
            "`hpcgate sandbox up` installs them)"
        )
    return ""


def cut_hub_link(sandbox: Sandbox) -> None:
    """Silently cut hub <-> login: packets are dropped, nothing is refused or reset.

    The login side of the hub veth goes down; established connections hang until
    keepalives or timeouts notice, as in a real network partition. Processes keep
    running. Undo with :func:`restore_hub_link`.
    """
    run(["ip", "-n", L.LOGIN_NS, "link", "set", L.HUB_VETH[1], "down"], what="cutting the hub link")


def restore_hub_link(sandbox: Sandbox) -> None:
    """Bring the hub <-> login link back after :func:`cut_hub_link`."""
    run(["ip", "-n", L.LOGIN_NS, "link", "set", L.HUB_VETH[1], "up"], what="restoring the hub link")
    wait_until(lambda: tcp_open(L.LOGIN_ADDR, L.SSH_PORT), "login's sshd to answer again", 15)


def wait_job(sandbox: Sandbox, job_id: str, timeout: float = 60) -> dict[str, str]:
    """Wait until Slurm job ``job_id`` ended (a final state of hpcgate's one table of
    Slurm states); return its ``scontrol show job`` fields."""

    def fields() -> dict[str, str] | None:
        result = sandbox.run_in("login", ["scontrol", "-o", "show", "job", job_id], check=False)
        found = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
        return found if found.get("JobState") in FINAL_STATES else None

    return wait_until(fields, f"Slurm job {job_id} to end", timeout, 0.3)  # type: ignore[return-value]


def squeue(sandbox, accounts=("hpcg-alice", "hpcg-bob")) -> list[dict]:
    """Every job of ``accounts`` Slurm still knows, as dicts (id, state, user, reason)."""
    out = sandbox.run_in(
        "login", ["squeue", "-h", "-t", "all", "-o", "%i|%T|%u|%r|%N"], timeout=30
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, state, user, reason, node = line.split("|")
        if user in accounts:
            jobs.append({"id": job_id, "state": state, "user": user, "reason": reason, "node": node})
    return jobs


def active_jobs(sandbox, account: str) -> list[dict]:
    """The jobs of ``account`` that are not over yet (no final state of hpcgate's one
    table of Slurm states)."""
    return [j for j in squeue(sandbox, (account,)) if j["state"] not in FINAL_STATES]


def stop_hub_and_jobs(hub, sandbox, users: dict[str, str]) -> None:
    """Stop the servers of ``users`` (hub name -> account) and the hub; cancel any job
    of those accounts still queued or running."""
    for user in users:
        r = hub.get(f"/hub/api/users/{user}")
        if r.ok and r.json()["servers"]:
            hub.request("DELETE", f"/hub/api/users/{user}/server")
    hub.settle_stops(2)
    hub.stop()
    for account in users.values():
        for job in active_jobs(sandbox, account):
            sandbox.run_in("login", ["scancel", job["id"]], check=False)
