"""Fixtures for the app recipes: a real ``jupyter server`` with hpcgate.lab and the
installed recipes and jupyter-server-proxy plugins (whose own server extension is
turned off: hpcgate serves them)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests
from apptools import BASE, Lab
from hubtools import free_port, wait_for

XSTARTUP = "#!/bin/sh\nexec xterm\n"
APPS_FILE = """
webfiles:
  command: python3 -m http.server {port} --bind 127.0.0.1 --directory .
  title: Files over HTTP
  setup: ["echo from-setup-line > setup-ran.txt"]
notthere:
  command: hpcgate-no-such-program --port {port}
  title: Missing program
  install: load the NoSuch module (module load nosuch)
"""


@pytest.fixture(scope="session")
def lab_apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps-lab")
    home = root / "home"
    runtime = root / "runtime"
    for d in (home, runtime, home / "logs"):
        d.mkdir(mode=0o700)
    (root / "xstartup").write_text(XSTARTUP)
    (root / "xstartup").chmod(0o755)
    (root / "apps.yaml").write_text(APPS_FILE)
    port = free_port()
    token = secrets.token_hex(16)
    cfg = root / "jupyter_server_config.py"
    cfg.write_text(
        textwrap.dedent(
            f"""
            c.ServerApp.port = {port}
            c.ServerApp.ip = "127.0.0.1"
            c.ServerApp.open_browser = False
            c.ServerApp.allow_root = True
            c.ServerApp.base_url = {BASE!r}
            c.ServerApp.root_dir = {str(home)!r}
            # hpcgate serves the jupyter-server-proxy plugins; its own extension stays off
            c.ServerApp.jpserver_extensions = {{"jupyter_server_proxy": False, "jupyter_lsp": False}}
            c.HPCGateLab.stop_grace_period = 5
            c.HPCGateLab.apps_file = {str(root / "apps.yaml")!r}
            c.HPCGateLab.app_setup = ["export HPCGATE_TEST_SETUP=global-setup-ran"]
            """
        )
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_TOKEN=token,
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(root / "cfgdir"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "jrt"),
        JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP=str(root / "xstartup"),
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "server", f"--config={cfg}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    lab = Lab(root, port, token, proc)
    lab.home = home
    lab.runtime = runtime

    def up():
        try:
            return lab.s.get(lab.url("api/status"), timeout=2).ok
        except requests.RequestException:
            assert proc.poll() is None, (root / "server.log").read_text()
            return False

    wait_for(up, 60, "the lab server")
    yield lab
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    if os.environ.get("HPCGATE_SHOW_LAB_LOG"):
        print((root / "server.log").read_text())


