"""Reservations on the sandbox's real Slurm: a reservation for alice only, one for bob
later, and one for alice that begins soon. Alice's form and offer show hers (with
start and end), bob's his; a launch in hers runs in it (``scontrol show job`` says
so); bob naming hers, and a name nobody has, are refused with the same sentence
through the REST API and the form. A screenshot of the form with the field goes to
the artifacts (browser-reservations-form.png). The reservations are deleted after."""

from __future__ import annotations

import re

import pytest

from harness.hub import Hub, browser_login, chromium, wait_for
from harness.sandbox import stop_hub_and_jobs
from hpcgate.sandbox.proc import wait_until

pytestmark = [pytest.mark.sandbox, pytest.mark.browser]

#: alice's now (30 min on compute1), alice's soon (in an hour), bob's later (in 2 h)
RESERVATIONS = {
    "hpcg-test-alice": ["StartTime=now", "Duration=30", "Users=hpcg-alice", "PartitionName=debug"],
    "hpcg-test-soon": ["StartTime=now+1hour", "Duration=30", "Users=hpcg-alice"],
    "hpcg-test-bob": ["StartTime=now+2hours", "Duration=30", "Users=hpcg-bob"],
}
FOREIGN = "You may not use reservation 'hpcg-test-alice' on cluster."


@pytest.fixture(scope="module")
def reservations(sandbox):
    made = []
    try:
        for name, fields in RESERVATIONS.items():
            sandbox.run_in("login", ["scontrol", "create", "reservation", f"ReservationName={name}",
                                     "Nodes=compute1", "Flags=IGNORE_JOBS", *fields])
            made.append(name)
        yield made
    finally:
        # Slurm keeps a reservation a job still runs in ("in use"): try until each is gone,
        # so that no later test finds compute1 reserved
        def gone() -> bool:
            for name in made:
                sandbox.run_in("login", ["scontrol", "delete", f"ReservationName={name}"], check=False)
            listed = sandbox.run_in("login", ["scontrol", "show", "reservation", "-o"], check=False).stdout
            return not any(f"ReservationName={name} " in listed for name in made)

        wait_until(gone, "the test's reservations to be deleted", 60, 1)


@pytest.fixture(scope="module")
def hub(sandbox, slurm_catalog, reservations, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("reservations-hub"), catalog=str(slurm_catalog),
              extra="c.HPCGate.reservations_interval = 2\n").start()
    yield hub
    stop_hub_and_jobs(hub, sandbox, {"alice": "hpcg-alice", "bob": "hpcg-bob"})


def offered(session, hub: Hub) -> dict[str, dict]:
    offer = session.get(hub.url + "/hub/api/hpcgate/offer", timeout=60).json()
    cluster = next(s for s in offer["systems"] if s["name"] == "cluster")
    return {r["name"]: r for r in cluster["reservations"]}


def test_each_user_sees_their_own(hub):
    alice, bob = hub.login("alice"), hub.login("bob")
    mine = offered(alice, hub)
    assert set(mine) == {"hpcg-test-alice", "hpcg-test-soon"}, mine
    assert mine["hpcg-test-alice"]["active"] and mine["hpcg-test-alice"]["partition"] == "debug"
    assert mine["hpcg-test-alice"]["when"].startswith("active until ")
    assert not mine["hpcg-test-soon"]["active"] and mine["hpcg-test-soon"]["when"].startswith("from ")
    assert mine["hpcg-test-soon"]["end"] - mine["hpcg-test-soon"]["start"] == 30 * 60
    assert set(offered(bob, hub)) == {"hpcg-test-bob"}
    page = alice.get(hub.url + "/hub/spawn/alice/res", timeout=60).text
    assert 'name="reservation"' in page and "hpcg-test-alice - active until" in page
    assert "hpcg-test-bob" not in page


def test_a_launch_in_it_runs_in_it_and_others_are_refused(hub, sandbox):
    # bob naming alice's, and a name nobody has: one sentence, through REST and the form
    r = hub.request("POST", "/hub/api/users/bob/servers/res",
                    json={"user_options": {"system": "cluster", "partition": "debug", "reservation": "hpcg-test-alice"}})
    assert r.status_code == 400 and FOREIGN in r.json()["message"], r.text
    r = hub.request("POST", "/hub/api/users/alice/servers/res",
                    json={"user_options": {"system": "cluster", "partition": "debug", "reservation": "nobody-has"}})
    assert r.status_code == 400 and "You may not use reservation 'nobody-has' on cluster" in r.json()["message"]
    bob = hub.login("bob")
    form = {"system": "cluster", "partition": "debug", "reservation": "hpcg-test-alice", "_xsrf": bob.cookies.get("_xsrf")}
    r = bob.post(hub.url + "/hub/spawn/bob/res", data=form, timeout=60, allow_redirects=False)
    assert r.status_code == 400 and FOREIGN in r.text.replace("&#39;", "'"), r.text[-2000:]
    # a runtime that outlasts the reservation: how long it may be
    r = hub.request("POST", "/hub/api/users/alice/servers/res",
                    json={"user_options": {"system": "cluster", "partition": "debug", "reservation": "hpcg-test-alice",
                                           "runtime": 45}})
    assert r.status_code == 400 and re.search(r"does not fit in it: choose at most (29|30) minutes", r.text), r.text

    r = hub.request("POST", "/hub/api/users/alice/servers/res",
                    json={"user_options": {"system": "cluster", "partition": "debug", "reservation": "hpcg-test-alice",
                                           "runtime": 10}}, timeout=120)
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: hub.user_model("alice")["servers"].get("res", {}).get("ready"), 120, "alice's session in her reservation")
    cards = {c["name"]: c for c in hub.get("/hub/api/hpcgate/users/alice/sessions").json()["sessions"]}
    job = cards["res"]["job_id"]
    assert cards["res"]["reservation"] == "hpcg-test-alice"
    fields = sandbox.run_in("login", ["scontrol", "-o", "show", "job", job]).stdout
    assert "Reservation=hpcg-test-alice" in fields.split() and "JobState=RUNNING" in fields, fields
    hub.request("DELETE", "/hub/api/users/alice/servers/res")


def test_the_form_with_a_reservation(hub, artifacts_dir):
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        browser_login(page, hub, "alice")
        page.goto(hub.url + "/hub/spawn/alice/shot")
        page.wait_for_selector("#hpcgate-form")
        page.select_option("select[name=system]", "cluster")
        page.select_option("select[name=partition]", "debug")
        assert page.is_visible("select[name=reservation]")
        names = page.eval_on_selector_all("select[name=reservation] option", "els => els.map(e => e.value)")
        assert names == ["", "hpcg-test-alice", "hpcg-test-soon"], names
        page.select_option("select[name=reservation]", "hpcg-test-alice")
        assert "Nodes the centre set aside" in page.text_content("#hpcgate-reservation-help")
        page.screenshot(path=str(artifacts_dir / "browser-reservations-form.png"), full_page=True)
        # on batch only the reservation without a partition is left
        page.select_option("select[name=partition]", "batch")
        names = page.eval_on_selector_all("select[name=reservation] option", "els => els.map(e => e.value)")
        assert names == ["", "hpcg-test-soon"], names
        context.close()
