"""Debian's nginx with TLS in front of `hpcgate up`, configured by the shipped
docs/deploy/nginx-hpcgate.conf: the login, a spawn (with its progress stream) and a
kernel websocket of the lab, every request verified against a test CA."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from harness.hub import ROOT, Hub, execute_in_kernel, wait_for
from harness.missing import not_installed
from hpcgate.net import free_port
from tests.deploy.tlstools import make_ca_and_server_cert

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "docs" / "deploy" / "nginx-hpcgate.conf"

NGINX_CONF = """
{user}
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/site.conf;
}}
"""


def render_site(hub_port: int, http_port: int, https_port: int, tls: dict[str, Path]) -> str:
    """The shipped site file with this test's ports and files (every replaced line must exist)."""
    text = SITE.read_text()
    replacements = {
        "    listen 80;\n": f"    listen 127.0.0.1:{http_port};\n",
        "    listen [::]:80;\n": "",
        "    listen 443 ssl;\n": f"    listen 127.0.0.1:{https_port} ssl;\n",
        "    listen [::]:443 ssl;\n": "",
        "/etc/hpcgate/tls/fullchain.pem": str(tls["fullchain"]),
        "/etc/hpcgate/tls/privkey.pem": str(tls["privkey"]),
        "proxy_pass http://127.0.0.1:8000;": f"proxy_pass http://127.0.0.1:{hub_port};",
        "server_name hub.example.org;": "server_name localhost;",
    }
    for old, new in replacements.items():
        assert old in text, f"{SITE} no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("tlshub"), keep_servers=False).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def nginx(hub):
    if not os.path.exists(NGINX):
        not_installed("nginx is not installed (scripts/install-system-deps.sh installs Debian's)")
    base = Path(tempfile.mkdtemp(prefix="hpcgate-nginx-"))
    os.chmod(base, 0o755)
    tls = make_ca_and_server_cert(base)
    user = ""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / "tmp" / name).mkdir(parents=True)
    if os.geteuid() == 0:
        # the master (root) reads the key; workers run as www-data and write only temp files
        user = "user www-data;"
        www = pwd.getpwnam("www-data")
        for path in (base / "tmp", *(base / "tmp").iterdir()):
            os.chown(path, www.pw_uid, www.pw_gid)
    http_port, https_port = free_port(), free_port()
    (base / "site.conf").write_text(render_site(hub.port, http_port, https_port, tls))
    (base / "nginx.conf").write_text(NGINX_CONF.format(user=user, dir=base))
    argv = [NGINX, "-p", str(base), "-c", str(base / "nginx.conf"), "-e", str(base / "error.log")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([*argv, "-g", "daemon off;"], stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{https_port}"
    try:
        wait_for(lambda: proc.poll() is None and requests.get(url + "/hub/api/", verify=str(tls["ca"]), timeout=5).ok,
                 30, "nginx to answer over TLS")
        yield {"url": url, "http_url": f"http://127.0.0.1:{http_port}", "ca": str(tls["ca"]), "dir": base}
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop of master and workers
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_an_unverified_client_is_refused_and_http_redirects(nginx):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(nginx["url"] + "/hub/login", timeout=10)  # the system's CAs do not know the test CA
    r = requests.get(nginx["http_url"] + "/hub/login", timeout=10, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")
    r = requests.get(nginx["url"] + "/hub/login", verify=nginx["ca"], timeout=10)
    assert r.status_code == 200 and 'name="password"' in r.text
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_login_spawn_progress_and_lab_websocket_through_tls(hub, nginx):
    url, ca = nginx["url"], nginx["ca"]
    session = hub.login("tess", base_url=url, verify=ca)
    page = session.get(url + "/hub/spawn", timeout=30)
    assert 'id="hpcgate-form"' in page.text
    r = session.post(url + "/hub/spawn", data={"_xsrf": session.cookies.get("_xsrf", path="/hub/")},
                     timeout=60, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    # the progress event stream through nginx, unbuffered, to its end
    events = []
    with session.get(url + "/hub/api/users/tess/server/progress", stream=True, timeout=120,
                     headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200, stream.text[:300]
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events and events[-1].get("ready") is True, events
    assert any("Submitted: job" in e["message"] for e in events)
    lab = session.get(url + "/user/tess/lab", timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.text[:300]
    assert lab.url.startswith(url + "/user/tess/lab")
    assert asyncio.run(run_in_kernel(session, url, ca, "tess", "print(6 * 7)")) == "42\n"
    hub.stop_server("tess")


async def run_in_kernel(session: requests.Session, url: str, ca: str, user: str, code: str) -> str:
    """Start a kernel as the logged-in browser does (cookies + XSRF), run ``code`` over its
    websocket through nginx (wss, verified against ``ca``) and return its stdout."""
    xsrf = session.cookies.get("_xsrf", path=f"/user/{user}/")
    r = session.post(url + f"/user/{user}/api/kernels", json={"name": "python3"}, timeout=60,
                     headers={"X-XSRFToken": xsrf})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies if c.path in ("/", f"/user/{user}/"))
    ws_url = url.replace("https", "wss", 1) + f"/user/{user}/api/kernels/{kernel}/channels?_xsrf={xsrf}"
    context = ssl.create_default_context(cafile=ca)
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookies}, ssl_options=context))
    try:
        out = await execute_in_kernel(ws, user, code)
        # the websocket needs the user's login: the same request without cookies is refused
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(ws_url, ssl_options=context))
        assert refused.value.code in (302, 403)
        return out
    finally:
        ws.close()
        session.delete(url + f"/user/{user}/api/kernels/{kernel}", headers={"X-XSRFToken": xsrf}, timeout=30)
