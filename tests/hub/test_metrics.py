"""hpcgate's metrics, scraped by a real Prometheus (Debian's) from a real hub and lab.

The hub's ``/hub/metrics`` (JupyterHub's and hpcgate's) and the lab's
``/user/<name>/hpcgate/metrics`` are scraped with a token in a credentials file; PromQL
queries through Prometheus's HTTP API return what the test did: one successful and one
failed spawn, one running server, an app started once and proxied to, and the energy
of a session while it runs and once it ended (issue 14: energy exported as metrics).
"""

from __future__ import annotations

import secrets
import sys

import pytest

from harness.hub import wait_for
from harness.missing import not_installed
from harness.ops import local_catalog, run_hub
from harness.prometheus import Prometheus, prometheus_missing_reason, wait_scraped

CATALOG = local_catalog(
    {"interactive": {"limits": {"cpus": {"min": 1, "default": 1, "max": 2}}}},
    {"broken": {"kind": "local", "singleuser_command": [sys.executable, "-c", "import sys; sys.exit(3)"],
                "partitions": {"p": {}}}},
    carbon={"intensity": 100},
)

SCRAPER = """
c.JupyterHub.services.append({{"name": "prometheus", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "prometheus",
    "scopes": ["read:metrics", "access:servers!user=mira"],
    "services": ["prometheus"],
}})
c.HPCGate.catalog_check_interval = 0.2
c.HPCGate.prometheus_sd_file = {sd_file!r}
c.HPCGate.prometheus_sd_interval = 0.5
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    token = secrets.token_hex(32)
    sd_file = str(tmp_path_factory.mktemp("file_sd") / "labs.json")
    for hub in run_hub(tmp_path_factory.mktemp("hub"), catalog, SCRAPER.format(token=token, sd_file=sd_file)):
        hub.scrape_token = token
        hub.sd_file = sd_file
        yield hub


@pytest.fixture(scope="module")
def prometheus(hub):
    reason = prometheus_missing_reason()
    if reason:
        not_installed(reason)
    target = f"127.0.0.1:{hub.port}"
    prom = Prometheus({
        "hub": {"target": target, "path": "/hub/metrics", "token": hub.scrape_token},
        "hub-without-token": {"target": target, "path": "/hub/metrics", "token": None},
        "lab": {"target": target, "path": "/user/mira/hpcgate/metrics", "token": hub.scrape_token},
        # the running labs, discovered from the file the hub keeps (hpcgate.hub.file_sd)
        "labs": {"file_sd": hub.sd_file, "token": hub.scrape_token},
    }).start()
    yield prom
    prom.stop()


def test_prometheus_scrapes_hub_and_lab_metrics_with_a_token(hub, prometheus):
    # one failed spawn (its server exits at once) and one that succeeds
    r = hub.spawn("olaf", {"system": "broken"})
    wait_for(lambda: not hub.user_model("olaf")["servers"], 60, "olaf's failed spawn to end")
    assert r.status_code in (201, 202, 500), r.text
    assert hub.spawn("mira", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("mira")
    # the lab's app: started by the first proxied request, then proxied to again
    r = hub.get("/user/mira/listing/", timeout=120)
    assert r.status_code == 200, r.text[:300]
    body = hub.get("/user/mira/listing/")
    assert body.status_code == 200

    # the hub: JupyterHub's metrics and hpcgate's, through one authenticated scrape
    assert wait_scraped(prometheus, "hub")["health"] == "up", prometheus.targets()["hub"]
    prometheus.wait_value('up{job="hub"}', 1)
    prometheus.wait_value('sum(hpcgate_spawns_total{system="local",partition="interactive",outcome="success"})', 1)
    prometheus.wait_value('sum(hpcgate_spawns_total{system="broken",partition="p",outcome="failure"})', 1)
    prometheus.wait_value('sum(hpcgate_running_servers{system="local",partition="interactive"})', 1)
    assert prometheus.value('sum(hpcgate_running_servers{system="broken"})') in (None, 0.0)
    for phase in ("submit", "queue_wait", "lab_start", "routing"):
        prometheus.wait_value(f'sum(hpcgate_spawn_phase_seconds_count{{system="local",phase="{phase}"}})', 1)
    # a local system has no tunnel
    assert prometheus.value('sum(hpcgate_spawn_phase_seconds_count{system="local",phase="tunnel"})') in (None, 0.0)
    assert prometheus.value('sum(hpcgate_scheduler_query_seconds_count{system="local"})') >= 1
    assert prometheus.value('sum(hpcgate_scheduler_query_errors_total{system="local"})') in (None, 0.0)
    # JupyterHub's own metrics are on the same page
    assert prometheus.value("sum(jupyterhub_running_servers)") == 1
    # without a token the hub refuses the scrape
    assert wait_scraped(prometheus, "hub-without-token")["health"] == "down"
    assert prometheus.value('up{job="hub-without-token"}') == 0

    # the lab's own metrics, through the hub's proxy with the same credentials file
    prometheus.wait_value('up{job="lab"}', 1)
    prometheus.wait_value('hpcgate_lab_apps_running{job="lab",app="listing"}', 1)
    prometheus.wait_value('hpcgate_lab_app_starts_total{job="lab",app="listing"}', 1)
    assert prometheus.value('hpcgate_lab_app_failures_total{job="lab",app="listing"}') in (None, 0.0)
    prometheus.wait_value('hpcgate_lab_proxy_requests_total{job="lab",app="listing"}', 2)
    out = prometheus.value('hpcgate_lab_proxy_bytes_total{job="lab",app="listing",direction="out"}')
    assert out is not None and out >= len(r.content) + len(body.content)


def test_a_sessions_energy_is_exported_while_it_runs_and_once_it_ended(hub, prometheus):
    # mira's session from the test above runs: 1 cpu at the default 10 W, PUE 1.0
    started = hub.user_model("mira")["servers"][""]["state"]["usage"]["started"]
    prometheus.wait_value('hpcgate_running_sessions_energy_wh{system="local",partition="interactive"} > bool 0', 1)
    assert prometheus.value('sum(hpcgate_sessions_ended_total{system="local"})') in (None, 0.0)
    hub.stop_server("mira")
    usage = hub.get("/hub/api/users/mira?include_stopped_servers=1").json()["servers"][""]["state"]["usage"]
    assert usage["started"] == started and usage["ended"] > started
    expected_wh = 10 * 1 * (usage["ended"] - usage["started"]) / 3600
    prometheus.wait_value('sum(hpcgate_sessions_ended_total{system="local",partition="interactive"})', 1)
    wh = prometheus.value('hpcgate_session_energy_wh_total{system="local",partition="interactive",method="estimate"}')
    assert wh is not None and abs(wh - expected_wh) <= 1e-3 * expected_wh + 1e-6, (wh, expected_wh)
    # 100 gCO2e/kWh from the catalog
    co2 = prometheus.value('hpcgate_session_co2_grams_total{system="local",partition="interactive"}')
    assert co2 is not None and abs(co2 - wh / 1000 * 100) < 1e-6, (co2, wh)
    # the session ended: no running session's energy is left for it
    prometheus.wait_value('sum(hpcgate_running_sessions_energy_wh{system="local"}) or vector(0)', 0)


def test_prometheus_discovers_the_running_labs_from_the_hubs_file(hub, prometheus):
    assert hub.spawn("mira", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("mira")
    assert hub.get("/user/mira/listing/", timeout=120).status_code == 200
    # found through the file, scraped with the lab's own path and labelled with the server
    prometheus.wait_value('up{job="labs",user="mira",server="",system="local",partition="interactive"}', 1)
    prometheus.wait_value('hpcgate_lab_apps_running{job="labs",user="mira",app="listing"}', 1)
    # olaf's failed server was never listed
    assert prometheus.value('count(up{job="labs"})') == 1
    hub.stop_server("mira")
    # the stopped lab leaves the file, and Prometheus drops its target
    wait_for(lambda: prometheus.targets().get("labs") is None, 30, "the stopped lab's target to be dropped")
