"""Chromium (Debian's, through playwright): the home page of session cards, the form at
portal quality and the lab's status-bar item, on a real hub. Screenshots go to the
artifacts directory (browser-sessions-*.png)."""

from __future__ import annotations

import re

import pytest

from harness.hub import Hub, browser_login, chromium, wait_for

pytestmark = pytest.mark.browser

CATALOG = """
systems:
  login:
    kind: local
    description: Login node, for editing and light analysis
    workdir: "{state_dir}/users/{account}"
    sessions_per_user: 1
    partitions:
      interactive:
        description: Shared login node, starts at once
        limits:
          cpus: {min: 1, default: 1, max: 2}
          memory: {min: 1, default: 2, max: 4}
          runtime: {min: 5, default: 60, max: 240}
  booster:
    kind: local
    description: GPU booster module (this machine, for the demo)
    workdir: "{state_dir}/users/{account}"
    partitions:
      cpu:
        description: CPU nodes
        limits:
          nodes: {min: 1, default: 1, max: 4}
          cpus: {min: 1, default: 2, max: 2}
          memory: {min: 1, default: 2, max: 4}
          runtime: {min: 1, default: 60, max: 720}
      gpu:
        description: 4 x A100 per node
        limits:
          nodes: {min: 1, default: 1, max: 2}
          cpus: {min: 1, default: 2, max: 2}
          memory: {min: 1, default: 2, max: 4}
          gpus: {min: 1, default: 1, max: 4}
          runtime: {min: 5, default: 9, max: 120}
projects:
  climate: {description: Regional climate runs}
groups:
  everyone:
    all_users: true
    grants:
      - {system: login}
      - {system: booster, projects: [climate]}
sessions: {per_user: 3, remembered: 6}
defaults: {system: login}
"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("browser-sessions")
    catalog = state / "catalog.yaml"
    catalog.write_text(CATALOG)
    hub = Hub(state / "hub", catalog=str(catalog)).start()
    yield hub
    for name in ("notes", "gpu-run", "last-call"):
        hub.request("DELETE", f"/hub/api/users/lena/servers/{name}")
    hub.stop()


def card(page, name: str):
    return page.locator(f'article.hpcgate-card[data-session="{name}"]')


def test_session_cards_form_and_lab_status(browser, hub, artifacts_dir):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    browser_login(page, hub, "lena")
    page.goto(hub.url + "/hub/home")
    page.wait_for_selector(".hpcgate-empty")
    assert "You have no sessions yet" in page.text_content("#hpcgate-sessions")
    page.screenshot(path=str(artifacts_dir / "browser-sessions-empty.png"), full_page=True)

    # a new named session: the form explains every field and says what the launch costs
    # a name JupyterHub would refuse gets a sentence on the page, not an error page
    page.fill("#hpcgate-new-name", "My_Lab")
    page.click("#hpcgate-new-button")
    assert "A session name has 1 to 30 lower-case letters" in page.text_content("#hpcgate-notice")
    assert page.url.endswith("/hub/home")
    page.fill("#hpcgate-new-name", "notes")
    page.click("#hpcgate-new-button")
    page.wait_for_selector("#hpcgate-form")
    assert page.url.endswith("/hub/spawn/lena/notes")
    assert page.input_value("select[name=system]") == "login"
    assert "Login node, for editing" in page.text_content(".hpcgate-system-description")
    for field in ("system", "partition", "nodes", "cpus", "memory", "runtime"):
        assert page.text_content(f"#hpcgate-{field}-help").strip()
    assert not page.is_visible("input[name=gpus]")  # no GPUs on the login node
    assert "up to 1 core-hours" in page.text_content(".hpcgate-cost")
    # the booster's GPU partition: the GPU field appears, the cost follows the fields
    page.select_option("select[name=system]", "booster")
    assert page.is_visible("select[name=project]")
    page.select_option("select[name=partition]", "gpu")
    assert page.is_visible("input[name=gpus]")
    page.fill("input[name=nodes]", "2")
    page.fill("input[name=cpus]", "2")
    page.fill("input[name=runtime]", "30")
    cost = page.text_content(".hpcgate-cost")
    assert "2 nodes × 2 CPUs for 30 min: up to 2 core-hours and 1 GPU-hours, charged to project climate" in cost
    page.screenshot(path=str(artifacts_dir / "browser-sessions-form-gpu.png"), full_page=True)
    # back to the login node for this session
    page.select_option("select[name=system]", "login")
    assert not page.is_visible("input[name=gpus]")
    page.fill("input[name=runtime]", "45")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_url("**/user/lena/notes/lab**", timeout=120_000)
    page.wait_for_selector(".jp-LauncherCard", timeout=120_000)

    # the lab's status bar: system, node, job id, time left -- from the hub
    item = page.wait_for_selector(".hpcgate-SessionItem:has-text('left')", timeout=30_000)
    text = item.text_content()
    assert text.startswith("login · ") and " · job " in text and re.search(r"4[45] min left", text), text
    title = item.get_attribute("title")
    assert "partition interactive" in title and "Click for all your sessions" in title, title
    # its energy so far, from the hub, labelled as an estimate (no scheduler accounting here)
    assert re.search(r" · [0-9.]+ Wh \(estimate\)$", text), text
    assert item.get_attribute("data-energy") == "estimate"
    assert "energy so far" in title and "estimated from the allocated CPUs and GPUs" in title, title
    page.screenshot(path=str(artifacts_dir / "browser-sessions-lab-statusbar.png"))

    # a second session on the GPU partition through the REST API (same options as the form)
    r = hub.request(
        "POST", "/hub/api/users/lena/servers/gpu-run",
        json={"user_options": {"system": "booster", "partition": "gpu", "gpus": 2, "runtime": 9}},
    )
    assert r.status_code in (201, 202), r.text

    # the home page shows both, live
    page.goto(hub.url + "/hub/home")
    notes = card(page, "notes")
    gpu = card(page, "gpu-run")
    wait_for(lambda: "Running" in gpu.locator(".hpcgate-badge").text_content(), 60, "the GPU session's card to run",
             interval=0.5)
    assert "login" in notes.text_content() and "interactive" in notes.text_content()
    assert "1 node · 2 CPUs · 2 GiB · 45 min" in notes.text_content()
    assert "2 GPUs" in gpu.text_content() and "climate" in gpu.text_content()
    assert gpu.locator(".hpcgate-time-left").text_content().endswith(("min", "s"))
    assert notes.locator(".hpcgate-open").get_attribute("href").endswith("/user/lena/notes/")
    page.screenshot(path=str(artifacts_dir / "browser-sessions-running.png"), full_page=True)

    # the lab of the short GPU session warns that it ends within 10 minutes
    lab = context.new_page()  # the same login
    lab.goto(hub.url + "/user/lena/gpu-run/lab")
    try:
        lab.wait_for_selector(".hpcgate-SessionItem-ending", timeout=120_000)
    finally:
        lab.screenshot(path=str(artifacts_dir / "browser-sessions-lab-warning.png"))
    toast = lab.wait_for_selector(".Toastify__toast:has-text('Save your work')", timeout=30_000)
    assert "ends in" in toast.text_content()
    lab.wait_for_selector(".jp-LauncherCard", timeout=60_000)
    lab.screenshot(path=str(artifacts_dir / "browser-sessions-lab-warning.png"))
    lab.close()

    # a two-minute session: its lab warns once, with the 2-minute notice only
    r = hub.request("POST", "/hub/api/users/lena/servers/last-call",
                    json={"user_options": {"system": "booster", "partition": "cpu", "runtime": 2}})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: hub.user_model("lena")["servers"].get("last-call", {}).get("ready"), 60, "the short session")
    lab = context.new_page()
    lab.goto(hub.url + "/user/lena/last-call/lab")
    toast = lab.wait_for_selector(".Toastify__toast:has-text('Save your work')", timeout=60_000)
    assert re.search(r"ends in (1 min \d\d s|2 min 00 s|\d+ s)", toast.text_content()), toast.text_content()
    lab.wait_for_timeout(2500)  # a few ticks of the countdown: still one notice
    assert lab.locator(".Toastify__toast:has-text('Save your work')").count() == 1
    lab.close()
    hub.request("DELETE", "/hub/api/users/lena/servers/last-call")

    # stop from the card: it turns "Stopped" without a reload, and can be relaunched
    notes.locator(".hpcgate-stop").click()
    wait_for(lambda: "Stopped" in notes.locator(".hpcgate-badge").text_content(), 60, "the card to say stopped",
             interval=0.5)
    assert notes.locator(".hpcgate-relaunch").is_visible()
    assert notes.locator(".hpcgate-edit").get_attribute("href").endswith("/hub/spawn/lena/notes")
    page.screenshot(path=str(artifacts_dir / "browser-sessions-stopped.png"), full_page=True)
    notes.locator(".hpcgate-relaunch").click()
    wait_for(lambda: "Running" in notes.locator(".hpcgate-badge").text_content(), 120, "the relaunched card to run",
             interval=0.5)
    options = hub.user_model("lena")["servers"]["notes"]["user_options"]
    assert options["runtime"] == 45 and options["system"] == "login"

    # edit (offered once stopped): the form opens with this session's options
    card(page, "notes").locator(".hpcgate-stop").click()
    wait_for(lambda: "Stopped" in card(page, "notes").locator(".hpcgate-badge").text_content(), 60,
             "the card to say stopped", interval=0.5)
    card(page, "notes").locator(".hpcgate-edit").click()
    page.wait_for_selector("#hpcgate-form")
    assert page.input_value("input[name=runtime]") == "45"
    assert page.input_value("select[name=system]") == "login"
    context.close()
