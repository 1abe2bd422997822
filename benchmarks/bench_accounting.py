"""Accounting queries with 50 users rendering the spawn form: cached vs per render.

Runs against the sandbox's real slurmdbd (MariaDB) over the sandbox's sshd (root;
the sandbox is brought up if it is down and taken down again only if this run brought
it up -- run it under ``flock /tmp/hpcgate-sandbox.lock``).

``USERS`` simulated users (user01.., plus hpcg-alice and hpcg-bob, who have
associations) each render the form of a system with ``projects: {source: slurm}``
once per ``THINK`` seconds for ``DURATION`` seconds. A render is what the hub does for
the form page without JupyterHub around it: the user's charges, the catalog's offer,
the form's HTML. Side by side, in one run:

- hpcgate: :class:`~hpcgate.hub.accounting.AccountingCache`, one ``sacctmgr`` per
  system per TTL for all users (target: DURATION / TTL queries);
- naive: one ``sacctmgr`` per render (what a form that asks the scheduler would do).

Printed: renders, accounting queries, queries per minute, render latency p50/p95.
"""

from __future__ import annotations

import asyncio
import copy
import os
import tempfile
import time
from pathlib import Path

import yaml

from hpcgate.catalog import Charges, UserInfo, load_catalog
from hpcgate.hub.accounting import AccountingCache
from hpcgate.hub.backends.base import BackendContext
from hpcgate.hub.backends.slurm import SlurmBackend
from hpcgate.hub.form import render_form
from hpcgate.remote.pool import SSHPool
from hpcgate.sandbox import Sandbox
from hpcgate.sandbox.catalog import catalog_data

from .report import percentile, ratio, table

USERS = int(os.environ.get("HPCGATE_BENCH_ACCOUNTING_USERS", "50"))
DURATION = float(os.environ.get("HPCGATE_BENCH_ACCOUNTING_SECONDS", "30"))
TTL = float(os.environ.get("HPCGATE_BENCH_ACCOUNTING_TTL", "10"))
THINK = 1.0


def user_names() -> list[str]:
    return ["hpcg-alice", "hpcg-bob", *(f"user{i:02d}" for i in range(1, USERS - 1))][:USERS]


async def phase(catalog, backend: SlurmBackend, cached: bool) -> tuple[int, int, list[float]]:
    """(renders, queries, render seconds) of USERS users for DURATION seconds."""
    cache = AccountingCache("cluster", backend.associations, TTL, query_timeout=30)
    naive_queries = 0
    latencies: list[float] = []
    end = time.monotonic() + DURATION

    async def charges(account: str) -> Charges:
        nonlocal naive_queries
        if cached:
            return await cache.charges(account)
        naive_queries += 1
        table_ = await backend.associations(account)
        accounts = tuple(a.account for a in table_ if a.user == account)
        default = next((a.default for a in table_ if a.user == account), None)
        return Charges(accounts, default or None)

    async def user(name: str, offset: float) -> None:
        await asyncio.sleep(offset)
        info = UserInfo(name, frozenset())
        while time.monotonic() < end:
            started = time.monotonic()
            offer = catalog.offer(info, None, {"cluster": await charges(name)})
            render_form(offer, {})
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(max(0.0, THINK - (time.monotonic() - started)))

    names = user_names()
    await asyncio.gather(*(user(n, i * THINK / len(names)) for i, n in enumerate(names)))
    return len(latencies), cache.queries if cached else naive_queries, latencies


async def measure(sandbox: Sandbox, tmp: Path) -> None:
    data = copy.deepcopy(catalog_data(sandbox.layout))
    cluster = data["systems"]["cluster"]
    # every sacctmgr runs as alice (the simulated users have no Unix accounts)
    cluster["projects"] = {"source": "slurm", "ttl": TTL, "query_as": "hpcg-alice"}
    cluster["accounts"] = {"source": "hub_name"}
    data["projects"] = {"ml": {"description": "Machine learning"}, "physics": {"description": "Physics"}}
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    catalog = load_catalog(path)
    pool = SSHPool(8)
    backend = SlurmBackend("cluster", catalog.systems["cluster"], BackendContext(state_dir=str(tmp)), pool=pool)
    try:
        await backend.associations("hpcg-alice")  # the SSH connection is up before either phase
        results = {}
        for name, cached in (("hpcgate (AccountingCache)", True), ("naive (sacctmgr per render)", False)):
            results[name] = await phase(catalog, backend, cached)
    finally:
        await pool.close()
    per_minute = {n: q * 60.0 / DURATION for n, (_, q, _) in results.items()}
    ours, theirs = per_minute["hpcgate (AccountingCache)"], per_minute["naive (sacctmgr per render)"]
    rows = []
    for name, (renders, queries, lat) in results.items():
        rows.append([name, renders, queries, per_minute[name], percentile(lat, 50) * 1000, percentile(lat, 95) * 1000])
    table(
        f"Accounting queries: {USERS} users rendering the form every {THINK:.0f} s for {DURATION:.0f} s, "
        f"TTL {TTL:.0f} s (target: {60 / TTL:.0f} per minute)",
        ["variant", "renders", "sacctmgr queries", "queries/min", "render p50 ms", "render p95 ms"],
        rows,
    )
    print(f"accounting queries per minute, naive / hpcgate: {ratio(theirs, ours)}", flush=True)


def run() -> None:
    sandbox = Sandbox()
    sandbox.hold()
    try:
        with tempfile.TemporaryDirectory(prefix="hpcgate-bench-accounting-") as tmp:
            asyncio.run(measure(sandbox, Path(tmp)))
    finally:
        sandbox.release()
