"""Operations: the cost of a metrics scrape, and a hub restart with running servers.

1. ``/hub/metrics`` (JupyterHub's and hpcgate's metrics) with 200 registered servers:
   wall time per scrape and the hub's CPU time per scrape (utime+stime of the hub
   process), beside the same hub answering ``/hub/api/`` (an authenticated request that
   computes nothing) as the floor every request pays.
2. A hub restart with 50 running servers: from ``hpcgate up`` starting until every
   server answers through the proxy again, the hub on SQLite beside PostgreSQL
   (Debian's, a real server in a temporary directory).

The servers are stand-ins (benchmarks/standin_lab.py: reports its address like
hpcgate-singleuser, answers GET) on the local backend: the numbers are the hub's.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import requests

from benchmarks.report import median, percentile, ratio, table
from harness.hub import Hub, wait_for
from tests.pgtools import PostgresServer, new_database, pg_missing_reason

SCRAPE_SERVERS = int(os.environ.get("HPCGATE_BENCH_SCRAPE_SERVERS", "200"))
RESTART_SERVERS = int(os.environ.get("HPCGATE_BENCH_RESTART_SERVERS", "50"))
SCRAPES = int(os.environ.get("HPCGATE_BENCH_SCRAPES", "200"))
STANDIN = Path(__file__).resolve().parent / "standin_lab.py"

CATALOG = textwrap.dedent(
    f"""
    systems:
      local:
        kind: local
        status_interval: 5
        singleuser_command: ["{sys.executable}", "{STANDIN}"]
        partitions:
          interactive: {{}}
    groups:
      everyone:
        all_users: true
        grants:
          - system: local
    """
)
EXTRA = """
c.JupyterHub.services.append({"name": "bench-metrics", "api_token": %r})
c.JupyterHub.load_roles.append({"name": "bench-metrics", "scopes": ["read:metrics"], "services": ["bench-metrics"]})
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
"""


def hub_cpu(hub: Hub) -> float:
    """CPU seconds (user + system) of the JupyterHub process (``hpcgate up``'s child; its pid file)."""
    pid = int((hub.state_dir / "jupyterhub.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_servers(hub: Hub, n: int) -> list[str]:
    users = [f"u{i:03d}" for i in range(n)]

    def one(user: str) -> None:
        r = hub.spawn(user, {"system": "local"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(user, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, users))
    return users


def routed(hub: Hub, users: list[str]) -> bool:
    session = requests.Session()
    for user in users:
        r = session.get(f"{hub.url}/user/{user}/", headers={"Authorization": f"token {hub.token}"},
                        timeout=10, allow_redirects=False)
        if r.status_code != 200 or "stand-in lab" not in r.text:
            return False
    return True


def measure(hub: Hub, path: str, token: str) -> tuple[list[float], float, int]:
    """Wall ms per request, hub CPU ms per request, response size."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    session.get(hub.url + path, headers=headers, timeout=30).raise_for_status()
    walls = []
    cpu0 = hub_cpu(hub)
    size = 0
    for _ in range(SCRAPES):
        t = time.perf_counter()
        r = session.get(hub.url + path, headers=headers, timeout=30)
        walls.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        size = len(r.content)
    cpu = (hub_cpu(hub) - cpu0) * 1000 / SCRAPES
    return walls, cpu, size


def stop_all(hub: Hub, users: list[str]) -> None:
    for user in users:
        hub.request("DELETE", f"/hub/api/users/{user}/server")
    wait_for(lambda: not any(u["servers"] for u in hub.get("/hub/api/users").json()), 120, "every server to stop")


def bench_scrape(tmp: Path) -> None:
    token = os.urandom(16).hex()
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG)
    hub = Hub(tmp / "scrape", catalog=str(catalog), extra=EXTRA % token).start()
    try:
        users = start_servers(hub, SCRAPE_SERVERS)
        metrics = hub.get("/hub/metrics", headers={"Authorization": f"Bearer {token}"}).text
        running = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("hpcgate_running_servers{"))
        assert running == SCRAPE_SERVERS, f"hpcgate_running_servers says {running}"
        m_wall, m_cpu, m_size = measure(hub, "/hub/metrics", token)
        a_wall, a_cpu, a_size = measure(hub, "/hub/api/", hub.token)
        stop_all(hub, users)
    finally:
        hub.stop()
    table(
        f"Scrape of /hub/metrics with {SCRAPE_SERVERS} running servers, {SCRAPES} scrapes (ms)",
        ["request", "median", "p90", "hub CPU per request", "bytes"],
        [
            ["/hub/metrics (JupyterHub + hpcgate)", median(m_wall), percentile(m_wall, 90), m_cpu, m_size],
            ["/hub/api/ (authenticated, no work)", median(a_wall), percentile(a_wall, 90), a_cpu, a_size],
            ["ratio metrics / api", ratio(median(m_wall), median(a_wall)), ratio(percentile(m_wall, 90), percentile(a_wall, 90)), ratio(m_cpu, a_cpu), ""],
        ],
    )


def restart_time(tmp: Path, name: str, db_url: str | None) -> float:
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG)
    hub = Hub(tmp / name, catalog=str(catalog), extra=EXTRA % os.urandom(16).hex(), db_url=db_url).start()
    users: list[str] = []
    try:
        users = start_servers(hub, RESTART_SERVERS)
        assert routed(hub, users)
        hub.stop()  # --keep-servers: the stand-ins keep running
        started = time.perf_counter()
        hub.start(timeout=300)
        wait_for(lambda: routed(hub, users), 600, "every server routed after the restart", interval=0.1)
        elapsed = time.perf_counter() - started
        stop_all(hub, users)
    finally:
        hub.stop()
    return elapsed


def bench_restart(tmp: Path) -> None:
    rows = []
    sqlite = restart_time(tmp, "sqlite", None)
    rows.append(["SQLite", sqlite, ""])
    reason = pg_missing_reason()
    if reason:
        print(f"PostgreSQL left out: {reason}")
    else:
        server = PostgresServer().start()
        try:
            pg = restart_time(tmp, "postgresql", new_database(server))
        finally:
            server.stop()
        rows.append(["PostgreSQL 15", pg, ratio(pg, sqlite)])
    table(
        f"Hub restart to all {RESTART_SERVERS} running servers routed again (seconds)",
        ["database", "restart -> all routed", "ratio to SQLite"],
        rows,
    )


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="hpcgate-bench-ops-") as tmp:
        bench_scrape(Path(tmp))
        bench_restart(Path(tmp))
