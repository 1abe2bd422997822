"""Projects from Slurm accounting: the sandbox's slurmdbd (MariaDB) and its associations.

hpcg-alice (hub user alice) may charge ``ml`` and ``physics`` (default ``ml``), hpcg-bob
(bob) only ``physics``. The catalog's system ``cluster`` takes its projects from Slurm
with a short TTL; the catalog lists and describes ``ml`` and ``physics`` and leaves out
nothing else. The accounting is asked once per TTL for all users (the hub logs each
query), and a slurmdbd outage keeps the last known list and says so in the form.
"""

from __future__ import annotations

import copy
import re
import time

import pytest
import yaml

from harness.hub import Hub, wait_for
from harness.sandbox import squeue, stop_hub_and_jobs
from tests.hub.slurmtools import slurm_catalog_data

pytestmark = pytest.mark.sandbox

TTL = 6
QUERY_LINE = re.compile(r"Accounting of cluster asked \(query (\d+)\)")


@pytest.fixture(scope="module")
def hub(sandbox, tmp_path_factory):
    data = copy.deepcopy(slurm_catalog_data(sandbox.layout))
    data["systems"]["cluster"]["projects"] = {"source": "slurm", "ttl": TTL}
    data["projects"] = {"ml": {"description": "Machine learning"}, "physics": {"description": "Physics"}}
    state = tmp_path_factory.mktemp("projects-hub")
    path = state / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    hub = Hub(state, catalog=str(path)).start()
    yield hub
    stop_hub_and_jobs(hub, sandbox, {"alice": "hpcg-alice", "bob": "hpcg-bob"})


def project_select(page: str) -> tuple[list[str], str | None]:
    block = re.search(r'<select[^>]*name="project"[^>]*>(.*?)</select>', page, re.S).group(1)
    names = re.findall(r'<option value="([^"]+)"', block)
    selected = re.search(r'<option value="([^"]+)" selected', block)
    return names, selected.group(1) if selected else None


def queries(hub: Hub) -> int:
    found = QUERY_LINE.findall(hub.log_path.read_text(errors="replace"))
    return max(map(int, found), default=0)


def form(session, hub: Hub) -> str:
    r = session.get(hub.url + "/hub/spawn", timeout=60)
    r.raise_for_status()
    return r.text


def test_form_and_offer_show_exactly_the_users_accounts(hub):
    alice, bob = hub.login("alice"), hub.login("bob")
    assert project_select(form(alice, hub)) == (["ml", "physics"], "ml")
    assert project_select(form(bob, hub)) == (["physics"], "physics")
    offer = bob.get(hub.url + "/hub/api/hpcgate/offer", timeout=30).json()
    cluster = next(s for s in offer["systems"] if s["name"] == "cluster")
    assert cluster["projects"] == [{"name": "physics", "description": "Physics"}]
    assert cluster["default_project"] == "physics"
    assert 'ml - Machine learning' in form(alice, hub)


def test_one_query_per_ttl_for_all_users(hub):
    sessions = [hub.login("alice"), hub.login("bob")]
    wait_for(lambda: queries(hub) >= 1, 30, "a first accounting query")
    # renders after a fresh query: all from memory until the TTL has passed
    before = queries(hub)
    started = time.monotonic()
    renders = 0
    while time.monotonic() - started < TTL / 2:
        form(sessions[renders % 2], hub)
        renders += 1
    assert renders >= 4, "the forms took too long to show anything about caching"
    assert queries(hub) - before <= 1, f"{queries(hub) - before} accounting queries for {renders} renders"


def test_bob_may_not_charge_ml_and_alice_is_submitted_with_her_default(hub, sandbox):
    r = hub.spawn("bob", {"system": "cluster", "partition": "debug", "project": "ml"})
    assert r.status_code == 400 and "You may not charge project 'ml' on cluster" in r.json()["message"]
    r = hub.spawn("alice", {"system": "cluster", "partition": "debug"})
    assert r.status_code in (201, 202), r.text
    server = hub.wait_ready("alice", timeout=180)
    job = server["state"]["job"]["job_id"]
    account = sandbox.run_in("login", ["squeue", "-h", "-j", job, "-o", "%a"]).stdout.strip()
    assert account == "ml"
    hub.stop_server("alice")
    assert not [j for j in squeue(sandbox, ("hpcg-alice",)) if j["state"] == "RUNNING" and j["id"] == job]


def test_outage_keeps_the_last_list_and_says_so(hub, sandbox):
    alice = hub.login("alice")
    assert project_select(form(alice, hub))[0] == ["ml", "physics"]
    sandbox.stop_slurmdbd()
    try:
        time.sleep(TTL + 0.5)  # the list in memory is due for a refresh
        page = wait_for(lambda: (p := form(alice, hub)) and "did not answer" in p and p, 60, "the outage notice")
        assert project_select(page) == (["ml", "physics"], "ml")
        assert re.search(r"The accounting of cluster did not answer at \d\d:\d\d UTC; your projects there are "
                         r"shown as of \d\d:\d\d UTC\.", page)
        r = hub.spawn("bob", {"system": "cluster", "partition": "debug", "project": "ml"})
        assert r.status_code == 400  # the kept list still refuses what bob may not charge
    finally:
        sandbox.start_slurmdbd()
    page = wait_for(lambda: (p := form(alice, hub)) and "did not answer" not in p and p, 90, "the notice to go")
    assert project_select(page) == (["ml", "physics"], "ml")
