"""Maintenance and announcements from the catalog, through a real hub and lab.

A launch into a system or partition in maintenance is refused with a sentence (form
and REST); a server already running there is not touched; the offer API and the form
show each state; announcements reach the hub's pages (escaped) and the lab's API.
"""

from __future__ import annotations

import time

import pytest

from harness.hub import browser_login, chromium, wait_for, xsrf_headers
from harness.ops import local_catalog, run_hub

FUTURE = "2099-01-01T08:00:00Z"
CATALOG = local_catalog(
    {"open": {}, "closed": {"maintenance": {"until": FUTURE, "message": "New GPUs are being installed"}}},
    {
        "elsewhere": {"kind": "local", "maintenance": {"until": FUTURE, "message": "Cooling works"},
                      "partitions": {"p": {}}},
        "reopened": {"kind": "local", "maintenance": {"until": "2020-01-01T08:00:00Z", "message": "Long over"},
                     "partitions": {"p": {}}},
    },
    announcements=[
        {"message": "<b>Mind</b> the gap: file systems are slow today"},
        {"message": "An old note", "until": "2020-01-01T00:00:00Z"},
    ],
)
CLOSED_OPEN = local_catalog(
    {"open": {"maintenance": {"until": FUTURE, "message": "Now closed"}}, "closed": {}},
)
SENTENCE = "Partition closed of local is in maintenance until 2099-01-01 08:00 UTC: New GPUs are being installed."


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(CATALOG)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory, catalog_path):
    yield from run_hub(tmp_path_factory.mktemp("hub"), catalog_path, "c.HPCGate.catalog_check_interval = 0.2")


def test_offer_api_shows_each_state_and_the_current_announcements(hub):
    hub.create_user("olga")
    session = hub.login("olga")
    body = session.get(hub.url + "/hub/api/hpcgate/offer", headers=xsrf_headers(session)).json()
    status = body["status"]
    assert status["local"]["state"] == "degraded", body
    assert status["local"]["partitions"]["open"]["state"] == "available"
    assert status["local"]["partitions"]["closed"] == {"state": "maintenance", "sentence": SENTENCE}
    assert status["elsewhere"]["state"] == "maintenance"
    assert "Cooling works" in status["elsewhere"]["sentence"]
    assert status["reopened"]["state"] == "available"  # its maintenance is over
    assert [a["message"] for a in body["announcements"]] == ["<b>Mind</b> the gap: file systems are slow today"]


def test_a_launch_into_maintenance_is_refused_with_a_sentence(hub):
    r = hub.spawn("paul", {"system": "local", "partition": "closed"})
    assert r.status_code == 400, r.text
    assert SENTENCE in r.json()["message"]
    assert "Choose another system or partition" in r.json()["message"]
    r = hub.spawn("paul", {"system": "elsewhere"})
    assert r.status_code == 400 and "System elsewhere is in maintenance until 2099-01-01 08:00 UTC: Cooling works." in r.json()["message"]
    # the form refuses it too, and shows the states above the fields
    session = hub.login("paul")
    page = session.get(hub.url + "/hub/spawn")
    assert "hpcgate-status" in page.text and "New GPUs are being installed" in page.text
    r = session.post(hub.url + "/hub/spawn", data={"system": "local", "partition": "closed"},
                     headers=xsrf_headers(session))
    assert "is in maintenance until 2099-01-01 08:00 UTC" in r.text
    assert not hub.user_model("paul")["servers"]


def test_announcements_on_the_hubs_pages_escaped_and_in_the_lab(hub):
    session = hub.login("rita")
    home = session.get(hub.url + "/hub/home")
    assert "&lt;b&gt;Mind&lt;/b&gt; the gap" in home.text and "<b>Mind</b>" not in home.text
    assert "An old note" not in home.text
    assert hub.spawn("rita", {"system": "local", "partition": "open"}).status_code in (201, 202)
    hub.wait_ready("rita")
    try:
        lab = hub.get("/user/rita/hpcgate/api/announcements").json()
        assert [a["message"] for a in lab["announcements"]] == ["<b>Mind</b> the gap: file systems are slow today"]
    finally:
        hub.stop_server("rita")


def test_maintenance_declared_later_leaves_running_servers_alone(hub, catalog_path):
    assert hub.spawn("sam", {"system": "local", "partition": "open"}).status_code in (201, 202)
    hub.wait_ready("sam")
    try:
        catalog_path.write_text(CLOSED_OPEN)
        wait_for(lambda: hub.spawn("tom", {"system": "local", "partition": "open"}).status_code == 400, 30,
                 "the new maintenance to be read")
        time.sleep(3)  # several status intervals
        assert hub.user_model("sam")["servers"][""]["ready"]
        assert hub.get("/user/sam/api/status").status_code == 200
    finally:
        catalog_path.write_text(CATALOG)
        hub.stop_server("sam")


@pytest.mark.browser
def test_the_lab_shows_the_announcement_as_a_notification(hub, artifacts_dir):
    assert hub.spawn("uma", {"system": "local", "partition": "open"}).status_code in (201, 202)
    hub.wait_ready("uma")
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            browser_login(page, hub, "uma")
            page.goto(hub.url + "/user/uma/lab")
            toast = page.get_by_text("the gap: file systems are slow today")
            toast.wait_for(timeout=120_000)
            page.screenshot(path=str(artifacts_dir / "lab-announcement.png"))
            # shown as text: the catalog's markup is not rendered
            assert "<b>Mind</b>" in toast.first.text_content()
            page.close()
    finally:
        hub.stop_server("uma")
