"""Helpers and fixtures of the lab tests: a real ``jupyter server`` with hpcgate.lab (enabled by its installed config
file, not by these tests), upstream apps as real processes, a throwaway Unix user."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.missing import unavailable
from hpcgate.net import free_port

HERE = Path(__file__).parent
UPSTREAM = str(HERE / "upstream_app.py")
BASE = "/user/alice/"

RAW_ECHO = textwrap.dedent(
    """
    import asyncio, sys
    async def handle(r, w):
        while data := await r.read(65536):
            w.write(data); await w.drain()
        w.close()
    async def main():
        s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
        await s.serve_forever()
    asyncio.run(main())
    """
)


def wait_http(url: str, timeout: float = 60, **kw) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2, **kw)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssWatch:
    """Samples a process's RSS in a thread; ``peak`` in KiB."""

    def __init__(self, pid: int):
        self.pid = pid
        self.base = rss_kib(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


def start_upstream(*args: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, UPSTREAM, "--port", str(port), *args])
    wait_http(f"http://127.0.0.1:{port}/health", timeout=30)
    return proc, port


@pytest.fixture(scope="session")
def upstream():
    proc, port = start_upstream()
    yield port
    proc.terminate()
    proc.wait()


def server_config(port: int, root_dir: Path, extensions_off: tuple[str, ...], base: str = BASE) -> str:
    """The lines a test lab's jupyter_server_config.py starts with: 127.0.0.1:``port``
    under ``base``, serving ``root_dir``, as root if need be, the server extensions
    ``extensions_off`` disabled (hpcgate's own stays on)."""
    return textwrap.dedent(
        f"""
        c.ServerApp.port = {port}
        c.ServerApp.ip = "127.0.0.1"
        c.ServerApp.open_browser = False
        c.ServerApp.allow_root = True
        c.ServerApp.base_url = {base!r}
        c.ServerApp.root_dir = {str(root_dir)!r}
        c.ServerApp.jpserver_extensions = {dict.fromkeys(extensions_off, False)!r}
        """
    )


#: what the proxy tests' labs leave off: hpcgate's proxy serves jupyter-server-proxy's plugins
PROXY_LAB_EXTENSIONS_OFF = ("jupyter_server_proxy", "jupyterlab", "jupyter_lsp", "notebook_shim")


@contextlib.contextmanager
def http_server_of(user: str) -> Iterator[int]:
    """Python's http.server on 127.0.0.1 run by the Unix account ``user``; yields its
    port once it answers, and stops it by its PID (runuser passes SIGTERM on)."""
    port = free_port()
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", "/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", "/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=20)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def other_user():
    """A throwaway Unix user (removed afterwards); needs root."""
    if os.geteuid() != 0:
        unavailable("creating a second Unix user needs root", "CI runs as root")
    name = "hgt" + secrets.token_hex(4)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    subprocess.run(["usermod", "-p", "*", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)


def _plugin_dir(root: Path) -> Path:
    """A fake installed jupyter-server-proxy plugin (dist-info with an entry point)."""
    site = root / "site"
    dist = site / "hgt_jsp_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hgt-jsp-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[jupyter_serverproxy_servers]\nepplugin = hgt_jsp_plugin:setup\n\n[hpcgate_apps]\nownplugin = hgt_jsp_plugin:own\n"
    )
    (site / "hgt_jsp_plugin.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            def setup():
                # jupyter-server-proxy style: a callable command naming only 'port'
                def command(port):
                    return [sys.executable, {UPSTREAM!r}, "--port", str(port)]
                return {{"command": command, "timeout": 30, "launcher_entry": {{"title": "EP Plugin"}}}}
            def own():
                return {{"command": [sys.executable, {UPSTREAM!r}, "--unix", "{{unix_socket}}"], "unix_socket": True}}
            """
        )
    )
    return site


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A running jupyter server; yields an object with url(), token, pid, session."""
    root = tmp_path_factory.mktemp("lab")
    port = free_port()
    token = secrets.token_hex(16)
    iso_tcp = free_port()
    py = sys.executable
    up = UPSTREAM
    cfg = root / "jupyter_server_config.py"
    cfg.write_text(
        server_config(port, root, PROXY_LAB_EXTENSIONS_OFF)
        + textwrap.dedent(
            f"""
            import sys
            up = [{py!r}, {up!r}]
            c.HPCGateLab.stop_grace_period = 3
            c.HPCGateLab.websocket_max_message_size = 48 * 1024 * 1024  # test_websocket: over it, 1009
            c.HPCGateLab.apps = {{
                "echoapp": {{"command": up + ["--port", "{{port}}"], "ready_check": {{"path": "/health", "status": 200}}}},
                "unixapp": {{"command": up + ["--unix", "{{unix_socket}}"], "unix_socket": True}},
                "absapp": {{"command": up + ["--port", "{{port}}"], "absolute_url": True}},
                "slowready": {{"command": up + ["--port", "{{port}}", "--not-ready-for", "1.5"],
                               "ready_check": {{"path": "/health", "status": 200}}, "timeout": 60}},
                "crashy": {{"command": up + ["--port", "{{port}}", "--crash-after", "1"], "max_restarts": 2}},
                "cleanexit": {{"command": up + ["--port", "{{port}}", "--exit-after", "1"], "restart": "always", "max_restarts": 1}},
                "noretry": {{"command": up + ["--port", "{{port}}", "--exit-after", "1"], "restart": "never"}},
                "stubborn": {{"command": up + ["--port", "{{port}}", "--ignore-term", "--child-pidfile", {str(root / "child.pid")!r}],
                              "stop_timeout": 1}},
                "idle": {{"command": up + ["--port", "{{port}}"], "idle_timeout": 2}},
                "quiet": {{"command": up + ["--port", "{{port}}"], "exclude_last_activity_patterns": [".*/poll$"]}},
                "noactivity": {{"command": up + ["--port", "{{port}}"], "update_last_activity": False}},
                "rawsock": {{"command": [{py!r}, "-c", {RAW_ECHO!r}, "{{port}}"], "raw_socket_proxy": True}},
                "rewritten": {{"command": up + ["--port", "{{port}}"],
                               "rewrite_response": lambda response, path: (response.headers.__setitem__("X-Rewritten", path),
                                                                           setattr(response, "body", response.body.replace(b"GET", b"TEG")))}},
                "headers": {{"command": up + ["--port", "{{port}}"], "request_headers_override": {{"X-App-Port": "{{port}}"}}}},
                "mapped": {{"command": up + ["--port", "{{port}}"], "mappath": {{"/": "/mapped-root"}}}},
                "failstart": {{"command": [{py!r}, "-c", "import sys; print('boom on stderr', file=sys.stderr); sys.exit(7)"], "timeout": 10}},
                "isolated": {{"command": up + ["--unix", "{{unix_socket}}", "--also-tcp", "{iso_tcp}"],
                              "unix_socket": True, "isolate_network": True}},
                "isotcp": {{"command": up + ["--port", "{{port}}"], "isolate_network": True,
                            "ready_check": {{"path": "/health", "status": 200}}}},
            }}
            def jsp_command(port, base_url):
                return [{py!r}, {up!r}, "--port", str(port)]
            c.ServerProxy.servers = {{
                "jspcallable": {{"command": jsp_command, "environment": lambda port: {{"APP_PORT": str(port)}},
                                 "timeout": 30, "new_browser_tab": False}},
            }}
            """
        )
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_TOKEN=token,
        JUPYTER_CONFIG_DIR=str(root / "cfgdir"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        PYTHONPATH=str(_plugin_dir(root)),
    )
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "server", f"--config={cfg}", *( ["--debug"] if os.environ.get("HPCGATE_LAB_DEBUG") else [])],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    class Lab:
        pass

    lab = Lab()
    lab.port = port
    lab.token = token
    lab.pid = proc.pid
    lab.root = root
    lab.iso_tcp = iso_tcp
    lab.log_path = root / "server.log"
    lab.base = f"http://127.0.0.1:{port}{BASE}"
    lab.url = lambda path="": lab.base + path.lstrip("/")
    lab.auth = {"Authorization": f"token {token}"}
    lab.s = requests.Session()
    lab.s.headers.update(lab.auth)
    try:
        wait_http(lab.url("api/status"), timeout=60, headers=lab.auth)
    except TimeoutError:
        proc.kill()
        print((root / "server.log").read_text())
        raise
    yield lab
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    if os.environ.get("HPCGATE_SHOW_LAB_LOG"):
        print((root / "server.log").read_text())
    shutil.rmtree(root / "runtime", ignore_errors=True)
