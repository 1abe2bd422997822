"""Spawn POST -> ready: hpcgate's local backend vs JupyterHub's own local process spawner.

Both hubs run in this one process's run, through `hpcgate up` (same proxy, same
authenticator); the second one only swaps in JupyterHub's SimpleLocalProcessSpawner
(LocalProcessSpawner without the switch to a Unix user, which needs real accounts).
Each round spawns one server on each hub, alternating, and stops it again.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness.hub import Hub, wait_for

from .report import median, percentile, ratio, table

ROUNDS = int(os.environ.get("HPCGATE_BENCH_ROUNDS", "6"))

LOCALPROCESS = """
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"] if __import__("os").geteuid() == 0 else []
"""


def spawn_time(hub: Hub, user: str) -> float:
    hub.create_user(user)
    started = time.perf_counter()
    r = hub.request("POST", f"/hub/api/users/{user}/server", json={"user_options": {}})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: hub.user_model(user)["servers"].get("", {}).get("ready"), 120, f"{user} ready", interval=0.02)
    elapsed = time.perf_counter() - started
    hub.stop_server(user)
    return elapsed


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="hpcgate-bench-spawn-") as tmp:
        home = os.path.join(tmp, "homes", "{username}")
        ours = Hub(Path(tmp) / "hpcgate").start()
        theirs = Hub(Path(tmp) / "localprocess", extra=LOCALPROCESS.format(home=home)).start()
        times: dict[str, list[float]] = {"hpcgate": [], "localprocess": []}
        try:
            spawn_time(ours, "warmup")
            spawn_time(theirs, "warmup")
            for i in range(ROUNDS):
                times["hpcgate"].append(spawn_time(ours, f"u{i}"))
                times["localprocess"].append(spawn_time(theirs, f"u{i}"))
        finally:
            ours.stop()
            theirs.stop()
    a, b = times["hpcgate"], times["localprocess"]
    table(
        f"Spawn POST -> ready, local machine, {ROUNDS} rounds (seconds)",
        ["spawner", "median", "p90", "min", "max"],
        [
            ["hpcgate (local backend)", median(a), percentile(a, 90), min(a), max(a)],
            ["SimpleLocalProcessSpawner", median(b), percentile(b, 90), min(b), max(b)],
            ["ratio hpcgate / jupyterhub", ratio(median(a), median(b)), ratio(percentile(a, 90), percentile(b, 90)), "", ""],
        ],
    )
