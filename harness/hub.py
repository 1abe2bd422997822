"""A real JupyterHub + configurable-http-proxy for tests, started through `hpcgate up`.

The hub runs as a subprocess on free ports with its state in a temporary directory.
A test-only service token (in a 0600 extra config file) gives the tests admin rights
over users and servers; user-facing paths are exercised with real logins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests
import requests.adapters

from hpcgate.files import write_atomic
from hpcgate.net import free_port

ROOT = Path(__file__).resolve().parents[1]
HPCGATE = [sys.executable, "-m", "hpcgate.cli"]


#: Debian's chromium, driven by playwright, with the flags it needs as root without a GPU.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextmanager
def chromium():
    """A playwright Browser on Debian's chromium; fails the test if chromium is missing."""
    if not shutil.which(CHROMIUM):
        raise AssertionError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/install-system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connections from a chosen local address (e.g. 127.0.0.5: another loopback client)."""

    def __init__(self, source: str, **kw):
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kw)


def session_from(source: str) -> requests.Session:
    """A requests session whose connections come from ``source``."""
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(source))
    return session


def process_environ(pid: int) -> dict[str, str]:
    """The environment a process was started (exec'd) with, from ``/proc/PID/environ``."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode("utf-8", "replace").split("=", 1) for item in raw if b"=" in item)


def hub_leaks(server_env: dict[str, str], hub_pid: int, allowed: set[str] | frozenset[str]) -> set[str]:
    """Variables of the hub process that a server's environment has with the hub's value.

    ``allowed``: names a server may share with the hub (``SHELL``, the locale...);
    ``JUPYTERHUB_*``, ``HPCGATE_*`` and ``LC_*`` are always allowed.
    """
    hub_env = process_environ(hub_pid)
    return {
        name
        for name, value in hub_env.items()
        if server_env.get(name) == value
        and name not in allowed
        and not name.startswith(("LC_", "JUPYTERHUB_", "HPCGATE_"))
    }


#: Variables a login environment on a node may have with the same value as the hub:
#: the shell, the locale, the terminal type and the shell's nesting counter.
LOGIN_SHARED = frozenset({"SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "SHLVL"})


def _ended(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (an orphan waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, OSError) as exc:
            last_error, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")


EXTRA_CONFIG = """
c = get_config()  # noqa: F821
c.JupyterHub.services = [{{"name": "hpcgate-tests", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "hpcgate-tests",
    "scopes": ["admin:users", "admin:servers", "access:servers", "read:users", "list:users", "tokens", "read:metrics"],
    "services": ["hpcgate-tests"],
}}]
c.HPCSpawner.progress_poll_interval = 0.5
{extra}
"""


class Hub:
    def __init__(
        self,
        state_dir: Path,
        catalog: str | None = None,
        extra: str = "",
        keep_servers: bool = True,
        admins: tuple[str, ...] = (),
        db_url: str | None = None,
        args: list[str] | None = None,
    ):
        """``db_url``: the hub's database (a secret: passed in HPCGATE_DB_URL, never in argv);
        None is the SQLite default. ``args``: more ``hpcgate up`` options."""
        self.state_dir = Path(state_dir)
        self.admins = tuple(admins)
        self.db_url = db_url
        self.args = list(args or [])
        self.catalog = catalog
        self.extra = extra
        self.keep_servers = keep_servers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.state_dir / "hub.log"

    # --- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60) -> Hub:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.state_dir / "tests_config.py"
        write_atomic(config, EXTRA_CONFIG.format(token=self.token, extra=self.extra))
        argv = [*HPCGATE, "up", "--state-dir", str(self.state_dir), "--port", str(self.port), "--config", str(config)]
        if self.catalog:
            argv += ["--catalog", self.catalog]
        if self.keep_servers:
            argv.append("--keep-servers")
        for admin in self.admins:
            argv += ["--admin", admin]
        argv += self.args
        env = dict(os.environ)
        env.pop("HPCGATE_DB_URL", None)
        if self.db_url:
            env["HPCGATE_DB_URL"] = self.db_url
        env["PATH"] = os.pathsep.join([str(ROOT / "node_modules/.bin"), str(Path(sys.executable).parent), env["PATH"]])
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.state_dir)
        log.close()
        wait_for(lambda: self._alive() and self.get("/hub/api/").ok, timeout, "the hub to answer")
        return self

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"hpcgate up exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True

    def stop(self, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._end_orphaned_proxy(timeout)

    def _end_orphaned_proxy(self, timeout: float) -> None:
        """A hub that was killed (a test's SIGKILL) leaves its proxy running, as JupyterHub
        means it to (a restarted hub takes it over); the test run started it, so end it."""
        pid_file = self.state_dir / "proxy.pid"
        try:
            pid = int(pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"configurable-http-proxy" not in command and b"traefik" not in command:
            return  # the PID is someone else's by now
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _ended(pid), timeout, "the orphaned proxy to end")

    def stop_every_server(self) -> None:
        """Ask the hub to stop every user's default server (a fixture's teardown)."""
        for user in self.get("/hub/api/users").json():
            if user["servers"]:
                self.request("DELETE", f"/hub/api/users/{user['name']}/server")
        self.settle_stops(1)

    def settle_stops(self, at_most: float) -> None:
        """After DELETEs of a teardown: return once no user has a server listed, or after
        ``at_most`` s (whatever is still stopping then is the hub's to finish; no error)."""
        deadline = time.monotonic() + at_most
        while time.monotonic() < deadline:
            try:
                if not any(user["servers"] for user in self.get("/hub/api/users", timeout=5).json()):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)

    def log_tail(self, nbytes: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-nbytes:].decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def password(self) -> str:
        return (self.state_dir / "demo-password").read_text().strip()

    @property
    def admin_password(self) -> str:
        """The password of the ``--admin`` users (``hpcgate up`` writes it 0600)."""
        return (self.state_dir / "admin-password").read_text().strip()

    # --- API -------------------------------------------------------------------------

    def request(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` on /hub/metrics whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        r = self.get("/hub/metrics")
        r.raise_for_status()
        total = 0.0
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def user_model(self, user: str) -> dict:
        r = self.get(f"/hub/api/users/{user}")
        r.raise_for_status()
        return r.json()

    def create_user(self, user: str) -> None:
        r = self.request("POST", f"/hub/api/users/{user}")
        assert r.status_code in (201, 409), r.text

    def spawn(self, user: str, options: dict | None = None) -> requests.Response:
        self.create_user(user)
        return self.request("POST", f"/hub/api/users/{user}/server", json={"user_options": options or {}})

    def wait_ready(self, user: str, timeout: float = 120) -> dict:
        def ready():
            server = self.user_model(user)["servers"].get("")
            if server and server.get("ready"):
                return server
            if not server or not server.get("pending"):
                raise AssertionError(f"{user}'s server is gone while waiting:\n{self.log_tail()}")
            return None

        return wait_for(ready, timeout, f"{user}'s server to be ready")

    def stop_server(self, user: str, timeout: float = 60) -> None:
        r = self.request("DELETE", f"/hub/api/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: "" not in self.user_model(user)["servers"], timeout, f"{user}'s server to stop")

    def spawn_with_progress(self, user: str, options: dict | None = None) -> tuple[requests.Response, list[dict]]:
        """Spawn through the REST API and read the whole progress stream meanwhile.

        The POST blocks for up to JupyterHub's slow_spawn_timeout, so it runs in a
        thread while this one opens the progress stream as soon as the spawn is pending.
        """
        self.create_user(user)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            posted = pool.submit(self.spawn, user, options)
            events = wait_for(
                lambda: posted.done() and not self._pending(user) and ["post-done"] or (self._pending(user) and self.progress(user)),
                60,
                f"{user}'s progress stream",
                interval=0.05,
            )
            response = posted.result()
        if events == ["post-done"]:
            raise AssertionError(f"the spawn of {user} ended before its progress could be read: {response.text}")
        return response, events

    def _pending(self, user: str) -> bool:
        server = self.user_model(user)["servers"].get("")
        return bool(server and server.get("pending") == "spawn")

    def progress(self, user: str, timeout: float = 120) -> list[dict]:
        """All events of the user's progress stream until it ends."""
        events = []
        with self.get(f"/hub/api/users/{user}/server/progress", stream=True, timeout=timeout) as r:
            r.raise_for_status()
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        return events

    # --- a logged-in browser-like session ---------------------------------------------

    def login(
        self,
        user: str,
        password: str | None = None,
        base_url: str | None = None,
        verify: bool | str = True,
        source: str | None = None,
    ) -> requests.Session:
        """A session logged in as ``user`` (with the demo password unless ``password``);
        ``base_url``/``verify``: through a TLS proxy in front (its CA file); ``source``:
        the local address the session connects from."""
        session, r = self.try_login(user, password, base_url, verify, source)
        assert r.status_code == 302, f"login as {user} failed: {r.status_code} {r.text[:300]}"
        return session

    def try_login(
        self,
        user: str,
        password: str | None = None,
        base_url: str | None = None,
        verify: bool | str = True,
        source: str | None = None,
    ) -> tuple[requests.Session, requests.Response]:
        """Submit the login form as a browser does; the session and the form's answer."""
        base = base_url or self.url
        session = session_from(source) if source else requests.Session()
        session.verify = verify
        if verify is not True:
            # else requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's CA file
            session.trust_env = False
        page = session.get(base + "/hub/login", timeout=30)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": user, "password": self.password if password is None else password}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        r = session.post(base + "/hub/login", data=data, timeout=30, allow_redirects=False)
        return session, r


def browser_login(page, hub: Hub, user: str) -> None:
    """Log ``user`` in through the hub's login form in a Playwright ``page`` (demo password)."""
    page.goto(hub.url + "/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.password)
    page.click("input[type=submit], button[type=submit]")


def xsrf_headers(session: requests.Session) -> dict:
    token = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
    return {"X-XSRFToken": token} if token else {}


async def execute_in_kernel(ws, user: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` over an open kernel websocket (``ws``: tornado's client); its stdout.

    Waits for the kernel to go idle after the request; a kernel error fails the test.
    """
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex, "msg_type": "execute_request",
              "version": "5.3"}
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                                 "channel": "shell"}))
    out = []
    while True:
        raw = await asyncio.wait_for(ws.read_message(), timeout)
        assert raw is not None, "the kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise AssertionError(f"the kernel raised: {msg['content']}")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
