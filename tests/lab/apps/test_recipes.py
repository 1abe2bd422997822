"""The recipes and plugins through a real lab server: availability, sockets, instances,
parameters, set-up lines, clean stops, and jupyter-server-proxy plugins served by hpcgate."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from harness.hub import wait_for
from harness.missing import not_installed
from tests.lab.apps.apptools import MLFLOW_BIN, alive, family_pids, start_lab, stop_lab, tcp_listeners, write_scalars

DESKTOP_PORTS = range(5800, 6000)


def start(lab, name, path="", **body):
    r = lab.api("POST", f"/{name}{path}", json=body or None)
    assert r.status_code == 200, (r.status_code, r.text, lab.log(name))
    return r.json()


def stop_and_check_gone(lab, name):
    """Stop through the API; no process of the app (descendants, session, tag) survives."""
    info = lab.apps()[name]
    pids = family_pids(info["pid"])
    assert pids, f"{name} has no processes"
    r = lab.api("DELETE", f"/{name}")
    assert r.json()["state"] == "stopped"
    survivors = wait_for(lambda: not any(alive(p) for p in pids) and "none", 20, f"{name}'s processes to end")
    assert survivors == "none"
    if info["unix_socket"]:
        assert not os.path.exists(info["unix_socket"])
    return pids


def display_of(lab, name) -> str:
    log = lab.log(name)
    found = re.findall(r"(?:X server on display|connected to X11 display) (:\d+)", log)
    assert found, log[-2000:]
    return found[-1]


def test_catalog_lists_recipes_plugins_and_generic_apps(lab_apps):
    apps = lab_apps.apps()
    for name in ("xpra", "xpra-2", "novnc", "tboard", "mlflow", "webfiles", "notthere", "tensorboard", "desktop-websockify"):
        assert name in apps, sorted(apps)
    assert apps["xpra-2"]["family"] == "xpra" and apps["xpra"]["instances"] == 4
    for name in ("xpra", "novnc", "tboard", "webfiles", "tensorboard", "desktop-websockify"):
        assert apps[name]["available"], apps[name]["missing"]
    missing = apps["notthere"]["missing"]
    assert not apps["notthere"]["available"]
    assert missing == [{"program": "hpcgate-no-such-program", "install": "load the NoSuch module (module load nosuch)"}]
    assert apps["mlflow"]["available"] == bool(shutil.which("mlflow", path=lab_apps.path))
    assert apps["tboard"]["parameters"]["logdir"]["kind"] == "directory"
    assert apps["xpra"]["launcher_entry"]["title"] == "Xpra Desktop"
    r = lab_apps.s.get(lab_apps.url("hpcgate/api/apps/xpra/icon"))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in r.content


def test_a_plugin_whose_program_is_missing_is_listed_unavailable_before_a_start(lab_apps):
    app = lab_apps.apps()["lookup"]
    assert app["available"] is False and app["state"] == "stopped"
    assert app["missing"] == [
        {"program": "the command of lookup", "install": "Can not find hpcgate-no-such-tool executable in $PATH"}
    ]
    r = lab_apps.api("POST", "/lookup")
    assert r.status_code == 503 and "hpcgate-no-such-tool" in r.json()["message"]
    assert lab_apps.apps()["lookup"]["state"] == "stopped"


def test_unavailable_app_says_what_to_install(lab_apps):
    r = lab_apps.api("POST", "/notthere")
    assert r.status_code == 503
    assert "module load nosuch" in r.json()["message"]
    assert lab_apps.s.get(lab_apps.url("notthere/")).status_code == 503


def test_generic_app_runs_setup_lines_then_its_command(lab_apps):
    start(lab_apps, "webfiles")
    assert (lab_apps.home / "setup-ran.txt").read_text().strip() == "from-setup-line"
    r = lab_apps.s.get(lab_apps.url("webfiles/setup-ran.txt"))
    assert r.status_code == 200 and r.text.strip() == "from-setup-line"
    pid = lab_apps.apps()["webfiles"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"HPCGATE_TEST_SETUP=global-setup-ran" in environ  # c.HPCGateLab.app_setup ran first
    stop_and_check_gone(lab_apps, "webfiles")


def test_program_found_through_setup_lines(lab_apps):
    """A program that only a ``module load``-like set-up line puts on PATH counts as
    installed, and runs."""
    assert lab_apps.apps()["frommodule"]["available"]
    start(lab_apps, "frommodule")
    assert lab_apps.s.get(lab_apps.url("frommodule/")).status_code == 200
    stop_and_check_gone(lab_apps, "frommodule")


def test_stop_ends_helpers_that_left_the_session(lab_apps):
    info = start(lab_apps, "detacher")
    sessions = {int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[3]) for p in family_pids(info["pid"])}
    assert len(sessions) == 2, "the helper did not start in its own session"
    pids = stop_and_check_gone(lab_apps, "detacher")
    assert len(pids) >= 2


def test_server_shutdown_stops_every_app(tmp_path):
    lab = start_lab(tmp_path)
    try:
        pids = set()
        for name in ("xpra", "novnc", "detacher"):
            pids |= family_pids(start(lab, name)["pid"])
    finally:
        stop_lab(lab)
    assert lab.proc.returncode is not None
    wait_for(lambda: not any(alive(p) for p in pids), 30, "every app process to end with the server")


def test_labextension_is_installed_and_enabled():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter"), "labextension", "list"], capture_output=True, text=True, check=True
    )
    line = next((ln for ln in (out.stdout + out.stderr).splitlines() if "hpcgate-lab" in ln), "")
    assert "enabled" in line and "OK" in line, out.stdout + out.stderr


def test_xpra_desktops_on_unix_sockets_several_per_user(lab_apps):
    first = start(lab_apps, "xpra", "/new")
    second = start(lab_apps, "xpra", "/new")
    assert {first["name"], second["name"]} == {"xpra", "xpra-2"}
    for info in (first, second):
        sock = info["unix_socket"]
        assert sock.startswith(str(lab_apps.runtime)) and info["port"] is None
        assert os.stat(os.path.dirname(sock)).st_mode & 0o777 == 0o700
        pids = family_pids(info["pid"])
        assert tcp_listeners(pids) == [], "an Xpra process listens on TCP"
        r = lab_apps.s.get(lab_apps.url(info["name"] + "/"))
        assert r.status_code == 200 and "xpra websockets client" in r.text
    assert display_of(lab_apps, "xpra") != display_of(lab_apps, "xpra-2")
    stop_and_check_gone(lab_apps, "xpra")
    stop_and_check_gone(lab_apps, "xpra-2")


async def _rfb_banner(url: str, token: str) -> bytes:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}), subprotocols=["binary"])
    try:
        return await asyncio.wait_for(conn.read_message(), 30)
    finally:
        conn.close()


def test_novnc_desktop_without_tcp_port(lab_apps):
    r = lab_apps.s.get(lab_apps.url("novnc/"), allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("vnc.html?autoconnect=1&resize=remote&reconnect=1&path=user/alice/novnc/websockify")
    page = lab_apps.s.get(lab_apps.url("novnc/vnc.html"))
    assert page.status_code == 200 and "noVNC" in page.text
    assert lab_apps.s.get(lab_apps.url("novnc/../../etc/passwd")).status_code == 404
    info = lab_apps.apps()["novnc"]
    assert info["state"] == "running" and info["port"] is None
    ws_url = f"ws://127.0.0.1:{lab_apps.port}/user/alice/novnc/websockify"
    banner = asyncio.run(_rfb_banner(ws_url, lab_apps.token))
    assert banner.startswith(b"RFB 003.")
    pids = family_pids(info["pid"])
    assert tcp_listeners(pids) == []
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}
    assert not ports & set(DESKTOP_PORTS), sorted(ports & set(DESKTOP_PORTS))
    for p in DESKTOP_PORTS[::50]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
    stop_and_check_gone(lab_apps, "novnc")


def test_tensorboard_on_a_directory_the_user_picks(lab_apps):
    logdir = lab_apps.home / "runs" / "exp1"
    logdir.mkdir(parents=True)
    write_scalars(logdir, "loss/train", [1.0, 0.5, 0.25])
    bad = lab_apps.api("POST", "/tboard/new", json={"parameters": {"logdir": "no/such/dir"}})
    assert bad.status_code == 400 and "is not a directory" in bad.json()["message"]
    outside = lab_apps.api("POST", "/tboard/restart", json={"parameters": {"logdir": "../../.."}})
    assert outside.status_code == 400 and "outside your work area" in outside.json()["message"]
    info = start(lab_apps, "tboard", "/new", parameters={"logdir": "runs"})
    assert info["values"]["logdir"] == str(lab_apps.home / "runs")
    tags = wait_for(
        lambda: (r := lab_apps.s.get(lab_apps.url(info["name"] + "/data/plugin/scalars/tags"))).ok and "loss/train" in r.text and r.json(),
        90, "TensorBoard to load the scalar",
    )
    assert "exp1" in tags
    # TCP-only TensorBoard runs in its own network namespace behind a unix socket
    # (bubblewrap comes with `make test`): no port on this host's network
    running = lab_apps.apps()[info["name"]]
    assert running["isolated"] and running["port"] is None and running["unix_socket"]
    assert tcp_listeners(family_pids(running["pid"])) == []
    stop_and_check_gone(lab_apps, info["name"])


def test_jupyter_server_proxy_plugins_served_by_hpcgate(lab_apps):
    """jupyter-tensorboard-proxy and jupyter-remote-desktop-proxy, with
    jupyter_server_proxy's own server extension disabled."""
    status = lab_apps.s.get(lab_apps.url("api/status")).json()
    assert status  # server up
    # jsp's own extension is off: its endpoint is hpcgate's, which lists the apps with
    # launcher entries disabled (hpcgate's extension shows them), jsp's would enable them
    info = lab_apps.s.get(lab_apps.url("server-proxy/servers-info"))
    assert info.status_code == 200
    listed = {p["name"]: p for p in info.json()["server_processes"]}
    assert "tensorboard" in listed and not any(p["launcher_entry"]["enabled"] for p in listed.values())
    write_scalars(lab_apps.home / "logs", "acc", [0.1, 0.9])
    r = lab_apps.s.get(lab_apps.url("tensorboard/data/runs"), timeout=120)
    assert r.status_code == 200 and "." in r.json()
    # the remote desktop plugin: its page (its own small server extension) and its
    # VNC websocket through hpcgate's raw socket proxy
    page = lab_apps.s.get(lab_apps.url("desktop/"))
    assert page.status_code == 200 and "viewer.js" in page.text
    banner = asyncio.run(_rfb_banner(f"ws://127.0.0.1:{lab_apps.port}/user/alice/desktop-websockify/", lab_apps.token))
    assert banner.startswith(b"RFB 003.")
    info = lab_apps.apps()["desktop-websockify"]
    assert tcp_listeners(family_pids(info["pid"])) == []
    stop_and_check_gone(lab_apps, "desktop-websockify")
    stop_and_check_gone(lab_apps, "tensorboard")


def test_mlflow_recipe(lab_apps):
    if not lab_apps.apps()["mlflow"]["available"]:
        not_installed(f"mlflow is not installed in {MLFLOW_BIN.parent} (the Makefile's MLFLOW_VENV)")
    info = start(lab_apps, "mlflow")
    assert lab_apps.s.get(lab_apps.url("mlflow/health")).status_code == 200
    assert (lab_apps.home / "mlruns" / "mlflow.db").exists()
    stop_and_check_gone(lab_apps, info["name"])
