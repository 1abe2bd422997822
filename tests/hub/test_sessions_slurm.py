"""Session cards on a real Slurm (the sandbox): queued with the scheduler's reason and
expected start (``squeue --start``'s StartTime), then running on compute1 with the end
of the job's wall time from Slurm, which the lab learns from the hub."""

from __future__ import annotations

import time

import pytest

from harness.hub import Hub, browser_login, chromium, wait_for
from harness.sandbox import active_jobs, squeue

pytestmark = pytest.mark.sandbox

BLOCK_MINUTES = 5


@pytest.fixture(scope="module")
def hub(sandbox, slurm_catalog, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("sessions-slurm-hub"), catalog=str(slurm_catalog)).start()
    yield hub
    hub.request("DELETE", "/hub/api/users/alice/servers/queued")
    hub.settle_stops(2)
    hub.stop()
    for job in active_jobs(sandbox, "hpcg-alice"):
        sandbox.run_in("login", ["scancel", job["id"]], check=False)


def card(hub: Hub, name: str) -> dict:
    r = hub.get(f"/hub/api/hpcgate/users/alice/sessions/{name}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def test_queued_card_then_running_with_slurms_end_time(hub, sandbox, browser, artifacts_dir):
    # every CPU of compute1 taken for a few minutes: the scheduler can plan when alice's job starts
    blocker = sandbox.run_in(
        "login",
        ["sbatch", "--parsable", "-p", "debug", "-c", "4", "-t", str(BLOCK_MINUTES), "-o", "/dev/null",
         "--wrap", "sleep 600"],
        user="hpcg-bob",
    ).stdout.strip()
    try:
        wait_for(lambda: any(j["id"] == blocker and j["state"] == "RUNNING" for j in squeue(sandbox)), 60,
                 "the blocker to run")
        hub.create_user("alice")
        r = hub.request("POST", "/hub/api/users/alice/servers/queued",
                        json={"user_options": {"system": "cluster", "partition": "debug", "runtime": 20}}, timeout=60)
        assert r.status_code in (201, 202), r.text
        queued = wait_for(lambda: (c := card(hub, "queued"))["state"] == "queued" and c["expected_start"] and c,
                          120, "a queued card with an expected start (Slurm's backfill plans it)", interval=1)
        assert queued["reason"] == "Resources" and queued["job_id"]
        # it starts when the blocker's time runs out, as Slurm plans it
        assert time.time() < queued["expected_start"] <= time.time() + BLOCK_MINUTES * 60 + 60
        shot_queued(hub, browser, artifacts_dir)
    finally:
        sandbox.run_in("login", ["scancel", blocker], check=False)

    running = wait_for(lambda: (c := card(hub, "queued"))["state"] == "running" and c, 180, "the session to run",
                       interval=1)
    assert running["node"] == "compute1"
    # Slurm's EndTime: the start plus the 20 minutes asked for
    assert running["end_time"] == pytest.approx(time.time() + 20 * 60, abs=120)
    lab = hub.get("/user/alice/queued/hpcgate/api/session")
    assert lab.status_code == 200, lab.text
    info = lab.json()
    assert info["job_id"] == running["job_id"] and info["node"] == "compute1"
    assert info["end_time"] == running["end_time"]
    r = hub.request("DELETE", "/hub/api/users/alice/servers/queued")
    assert r.status_code in (202, 204)
    wait_for(lambda: card(hub, "queued")["state"] == "stopped", 60, "the session to stop")
    wait_for(lambda: not active_jobs(sandbox, "hpcg-alice"), 60, "alice's job to leave the queue")


def shot_queued(hub: Hub, browser, artifacts_dir) -> None:
    """A screenshot of the home page with the queued card (Debian's chromium)."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        browser_login(page, hub, "alice")
        page.goto(hub.url + "/hub/home")
        line = page.wait_for_selector('[data-session="queued"] .hpcgate-state-line:has-text("expected to start")')
        assert "Waiting in the queue (Resources)" in line.text_content()
        page.screenshot(path=str(artifacts_dir / "browser-sessions-queued.png"), full_page=True)
    finally:
        context.close()
