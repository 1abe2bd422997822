"""Chromium through the whole chain hub -> proxy -> lab -> app, with the built-in local
catalog: the launcher tiles and the Running apps panel of hpcgate's JupyterLab
extension; an Xpra and a noVNC desktop whose xterm runs what the browser types;
TensorBoard showing a scalar the test wrote; stopping an app from the panel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.hub import Hub, browser_login, wait_for
from tests.lab.apps.apptools import alive, write_scalars, xwd_text_pixels

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
USER = "nora"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/install-system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def apps_hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("apps-hub")
    labcfg = state / "labcfg"
    labcfg.mkdir()
    # the lab the hub starts: jupyter-server-proxy's own server extension off (hpcgate serves its plugins)
    (labcfg / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": False}}}))
    extra = f"c.HPCSpawner.environment = {{'JUPYTER_CONFIG_DIR': {str(labcfg)!r}}}\n"
    hub = Hub(state, extra=extra).start()
    r = hub.spawn(USER)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USER)
    yield hub
    hub.stop_server(USER)
    hub.stop()


@pytest.fixture(scope="module")
def page(browser, apps_hub):
    page = browser.new_page()
    browser_login(page, apps_hub, USER)
    page.wait_for_load_state()
    page.goto(apps_hub.url + f"/user/{USER}/lab")
    page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
    return page


def lab_api(hub, path="", method="GET"):
    r = hub.request(method, f"/user/{USER}/hpcgate/api/apps{path}")
    r.raise_for_status()
    return r.json() if method != "GET" or not path.endswith("/log") else r.text


def app_log(hub, name):
    return hub.request("GET", f"/user/{USER}/hpcgate/api/apps/{name}/log").text


def display_env(hub, name):
    info = lab_api(hub, f"/{name}")
    log = app_log(hub, name)
    display = re.findall(r"(?:X server on display|connected to X11 display) (:\d+)", log)[-1]
    environ = dict(e.split(b"=", 1) for e in open(f"/proc/{info['pid']}/environ", "rb").read().split(b"\0") if b"=" in e)
    xauth = environ.get(b"XAUTHORITY", os.path.expanduser("~/.Xauthority").encode()).decode()
    return display, {"XAUTHORITY": xauth}


def xwd_dark(display, env):
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return xwd_text_pixels(display)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tile(page, title):
    """The launcher card whose label is exactly ``title``."""
    label = page.locator(".jp-LauncherCard-label", has_text=re.compile(f"^{re.escape(title)}$"))
    return page.locator(".jp-LauncherCard").filter(has=label)


def open_tile(page, title):
    """Click a launcher tile that opens a new browser tab; return that tab."""
    with page.context.expect_page(timeout=300_000) as new:
        tile(page, title).click()
    tab = new.value
    tab.wait_for_load_state()
    return tab


def type_and_prove(tab, canvas, hub, name, proof, artifacts_dir, shot):
    """Type into the xterm on ``canvas``; the canvas and the X display change, and the
    shell wrote the proof file."""
    display, env = display_env(hub, name)
    box = canvas.bounding_box()
    tab.mouse.click(box["x"] + 60, box["y"] + 60)
    before_png = canvas.screenshot()
    before_dark = xwd_dark(display, env)
    tab.keyboard.type("echo hpcgate-ok", delay=40)
    tab.keyboard.press("Enter")
    tab.keyboard.type(f"echo hpcgate-ok > {proof}", delay=30)
    tab.keyboard.press("Enter")
    wait_for(lambda: proof.exists() and proof.read_text().strip() == "hpcgate-ok", 60, f"the xterm in {name} to run the typed command")
    wait_for(lambda: canvas.screenshot() != before_png, 30, "the canvas to show the output")
    after_dark = wait_for(lambda: (d := xwd_dark(display, env)) > before_dark and d, 30, "the X display to show the output")
    assert after_dark > before_dark
    tab.screenshot(path=str(artifacts_dir / shot))


def test_launcher_lists_apps_and_unavailable_ones(page, apps_hub, artifacts_dir):
    # hpcgate's recipes and two jupyter-server-proxy plugins (Tensorboard, Desktop)
    for title in ("Xpra Desktop", "VNC Desktop", "TensorBoard", "Tensorboard", "Desktop"):
        tile(page, title).wait_for(timeout=60_000)
    if not shutil.which("mlflow"):
        assert tile(page, "MLflow (unavailable)").count() == 1
    page.screenshot(path=str(artifacts_dir / "apps-launcher.png"))


def test_xpra_desktop_from_the_launcher(page, apps_hub, artifacts_dir, tmp_path):
    tab = open_tile(page, "Xpra Desktop")
    canvas = tab.locator(".window:has(.windowtitle:text-is('xterm')) canvas").first
    canvas.wait_for(timeout=120_000)
    time.sleep(1)  # the first frame is painted after the window appears
    name = tab.url.split(f"/user/{USER}/")[1].split("/")[0]
    type_and_prove(tab, canvas, apps_hub, name, tmp_path / "xpra-proof.txt", artifacts_dir, "apps-xpra-desktop.png")
    tab.close()


def test_novnc_desktop_from_the_launcher(page, apps_hub, artifacts_dir, tmp_path):
    messages = []
    page.context.on("console", lambda m: messages.append(m.text))
    page.context.on("weberror", lambda e: messages.append(str(e.error)))
    page.context.on("response", lambda r: r.status >= 300 and messages.append(f"{r.status} {r.url}"))
    tab = open_tile(page, "VNC Desktop")
    canvas = tab.locator("#noVNC_container canvas")
    try:
        canvas.wait_for(timeout=60_000)
    except Exception:
        tab.screenshot(path=str(artifacts_dir / "apps-novnc-failed.png"))
        print(tab.url, messages)
        raise
    tab.wait_for_selector("#noVNC_status.noVNC_status_normal, #noVNC_control_bar_anchor", timeout=60_000)
    time.sleep(1)
    name = tab.url.split(f"/user/{USER}/")[1].split("/")[0]
    type_and_prove(tab, canvas, apps_hub, name, tmp_path / "vnc-proof.txt", artifacts_dir, "apps-novnc-desktop.png")
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in out.splitlines() if 5800 <= int(line.split()[3].rsplit(":", 1)[1]) <= 5999]
    tab.close()


def test_tensorboard_in_a_lab_tab_shows_the_scalar(page, apps_hub, artifacts_dir):
    # log directories must lie in the lab's work area (its working directory)
    workdir = Path(apps_hub.user_model(USER)["servers"][""]["state"]["job"]["extra"]["workdir"])
    logdir = workdir / "tb"
    write_scalars(logdir / "run1", "hpcgate_loss", [1.0, 0.6, 0.3, 0.2])
    tile(page, "TensorBoard").click()
    page.fill(".jp-Dialog input", "tb")
    page.click(".jp-Dialog .jp-mod-accept")
    frame = page.frame_locator(".hpcgate-app-tab iframe")
    frame.locator("text=hpcgate_loss").first.wait_for(timeout=180_000)
    page.screenshot(path=str(artifacts_dir / "apps-tensorboard.png"))


def test_running_panel_stops_an_app(page, apps_hub, artifacts_dir):
    page.click(".jp-SideBar [data-id='hpcgate-running-apps']")
    row = page.locator(".hpcgate-app-row[data-app='xpra']")
    row.wait_for(timeout=30_000)
    assert "running" in row.locator(".hpcgate-app-status").text_content()
    page.screenshot(path=str(artifacts_dir / "apps-running-panel.png"))
    row.locator("[data-action='log']").click()
    page.wait_for_selector(".jp-Dialog .hpcgate-app-log:has-text('starting xpra')")
    page.click(".jp-Dialog .jp-mod-accept")
    pid = lab_api(apps_hub, "/xpra")["pid"]
    row.locator("[data-action='stop']").click()
    row.wait_for(state="detached", timeout=60_000)
    assert lab_api(apps_hub, "/xpra")["state"] == "stopped"
    assert not alive(pid)
    page.screenshot(path=str(artifacts_dir / "apps-running-panel-after-stop.png"))
