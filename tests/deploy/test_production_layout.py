"""The production layout of docs/deployment.md, run as the shipped units would run it:
configurable-http-proxy apart (hpcgate-proxy.service's ExecStart), the hub from the
shipped /etc/hpcgate/jupyterhub_config.py (hpcgate-hub.service's ExecStart and
Environment), secrets in a credentials directory, state on a real PostgreSQL.

What it shows: the config works as shipped; a hub restart keeps the proxy's routes and
the users' servers; no secret is in any process's argv.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from harness.hub import EXTRA_CONFIG, ROOT, wait_for
from hpcgate.files import write_atomic
from hpcgate.net import free_port
from tests.deploy.unittools import UNITS, environment, exec_start
from tests.pgtools import new_database

SITE_CONFIG = """
c.JupyterHub.bind_url = "http://127.0.0.1:{proxy_port}"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.Authenticator.allow_all = True
"""


def _write_secret(path: Path, text: str) -> None:
    write_atomic(path, text + "\n")


class Layout:
    """/etc/hpcgate, the credentials directory and /var/lib/hpcgate, under one temp dir."""

    def __init__(self, base: Path, db_url: str):
        self.base = base
        self.etc, self.credentials, self.state = base / "etc", base / "credentials", base / "state"
        for d in (self.etc, self.credentials, self.state):
            d.mkdir(mode=0o700)
        self.proxy_port, self.api_port, self.hub_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.token = secrets.token_hex(32)
        self.proxy_token = secrets.token_hex(32)
        self.db_url = db_url
        shutil.copy(UNITS / "jupyterhub_config.py", self.etc / "jupyterhub_config.py")
        shutil.copy(ROOT / "src/hpcgate/data/default-catalog.yaml", self.etc / "catalog.yaml")
        site = SITE_CONFIG.format(proxy_port=self.proxy_port, api_port=self.api_port, hub_port=self.hub_port,
                                  password=secrets.token_urlsafe(12))
        site += EXTRA_CONFIG.format(token=self.token, extra="")
        _write_secret(self.etc / "site_config.py", site)
        _write_secret(self.credentials / "db-url", db_url)
        _write_secret(self.credentials / "proxy-auth-token", self.proxy_token)
        _write_secret(self.credentials / "cookie-secret", secrets.token_hex(32))
        self.paths = {"/etc/hpcgate": str(self.etc), "8000": str(self.proxy_port), "8001": str(self.api_port),
                      "8081": str(self.hub_port)}
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, unit: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HPCGATE_DB_URL", "CONFIGPROXY_AUTH_TOKEN")}
        env.update(environment(UNITS / unit, self.paths))
        # what StateDirectory= and LoadCredential= give the service
        env.update(STATE_DIRECTORY=str(self.state), CREDENTIALS_DIRECTORY=str(self.credentials))
        return env

    def start(self, name: str, unit: str) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "ab")
        proc = subprocess.Popen(exec_start(UNITS / unit, self.paths), env=self.env(unit), cwd=self.state,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def start_hub(self) -> None:
        self.start("hub", "hpcgate-hub.service")
        wait_for(lambda: self._running("hub") and self.get("/hub/api/").ok, 60, "the hub behind the proxy")

    def _running(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")
        return True

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def get(self, path: str, token: str | None = None, **kw) -> requests.Response:
        return self.request("GET", path, token, **kw)

    def request(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def routes(self) -> dict:
        r = requests.get(f"http://127.0.0.1:{self.api_port}/api/routes", timeout=10,
                         headers={"Authorization": f"token {self.proxy_token}"})
        r.raise_for_status()
        return r.json()


@pytest.fixture
def layout(tmp_path, postgres):
    layout = Layout(tmp_path, new_database(postgres))
    try:
        yield layout
    finally:
        for user in ("una",):
            try:
                layout.request("DELETE", f"/hub/api/users/{user}/server")
            except requests.RequestException:
                pass
        layout.stop("hub")
        layout.stop("proxy")


def server_ready(layout: Layout, user: str):
    server = layout.get(f"/hub/api/users/{user}").json()["servers"].get("")
    return server if server and server.get("ready") else None


def test_hub_restart_behind_a_proxy_apart_keeps_routes_and_servers(layout):
    layout.start("proxy", "hpcgate-proxy.service")
    wait_for(lambda: layout._running("proxy") and layout.routes() is not None, 30, "the proxy's API")
    layout.start_hub()
    assert layout.request("POST", "/hub/api/users/una").status_code == 201
    assert layout.request("POST", "/hub/api/users/una/server", json={"user_options": {}}).status_code in (201, 202)
    server = wait_for(lambda: server_ready(layout, "una"), 120, "una's server")
    job = server["state"]["job"]["job_id"]
    assert layout.get("/user/una/api/status").status_code == 200
    assert "/user/una" in layout.routes()

    layout.stop("hub")
    # the proxy and its route outlive the hub (the unit's KillMode and cleanup_proxy = False)
    assert "/user/una" in layout.routes()
    assert Path(f"/proc/{job}").exists()

    layout.start_hub()
    server = wait_for(lambda: server_ready(layout, "una"), 60, "una's server after the restart")
    assert server["state"]["job"]["job_id"] == job
    # a token made after the restart: the lab checks it with the restarted hub
    r = layout.request("POST", "/hub/api/users/una/tokens", json={"expires_in": 600})
    assert r.status_code == 201, r.text
    assert layout.get("/user/una/api/status", token=r.json()["token"]).status_code == 200

    # the hub logs JSON lines (the shipped config) with the server's fields
    lines = [json.loads(line) for line in layout.log("hub").splitlines() if line.startswith("{")]
    assert any(e.get("user") == "una" and e.get("phase") == "submitted" and e.get("job_id") == job for e in lines)
    # the state is in PostgreSQL; no secret is in a command line
    assert not list(layout.state.glob("*.sqlite"))
    password = layout.db_url.split(":")[2].split("@")[0]
    for proc in layout.procs.values():
        for pid in [proc.pid, *map(int, subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                        text=True).stdout.split())]:
            argv = Path(f"/proc/{pid}/cmdline").read_text()
            assert password not in argv and layout.proxy_token not in argv, argv
    layout.request("DELETE", "/hub/api/users/una/server")
    wait_for(lambda: not Path(f"/proc/{job}").exists() or "Z" in Path(f"/proc/{job}/stat").read_text().split(")")[-1][:3],
             30, "una's server to stop")
