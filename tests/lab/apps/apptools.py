"""Helpers for the app tests: a lab server with hpcgate.lab (jupyter-server-proxy's own
server extension off: hpcgate serves its plugins), processes, TCP listeners, TensorBoard event
files, reading an X window's pixels, and the lab server handle."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

from harness.hub import wait_for
from hpcgate.net import free_port
from tests.lab.labtools import server_config

BASE = "/user/alice/"
#: MLflow's own environment (`make test` installs it, Makefile MLFLOW_VENV): on the lab's PATH
MLFLOW_BIN = Path(sys.executable).parent.parent / "apps" / "mlflow" / "bin"


def alive(pid: int) -> bool:
    """True for a live, non-zombie process (PID 1 here may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def family_pids(root_pid: int) -> set[int]:
    """``root_pid`` and every live process that descends from it, shares its session,
    or carries the same HPCGATE_APP_TAG (helpers that called setsid)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        tag = next((e for e in env if e.startswith(b"HPCGATE_APP_TAG=")), None)
        procs[int(entry.name)] = (int(fields[1]), int(fields[3]), tag)
    root = procs.get(root_pid)
    if root is None:
        return set()
    found = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid, tag) in procs.items():
            if pid not in found and (ppid in found or sid == root_pid or (tag and tag == root[2])):
                found.add(pid)
                changed = True
    return {p for p in found if alive(p)}


def tcp_listeners(pids: set[int]) -> list[str]:
    """``ss`` lines of TCP listening sockets that belong to any of ``pids``."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


class Lab:
    """A running lab server: ``url(path)``, an authenticated ``requests`` session ``s``."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen):
        self.root = root
        self.port = port
        self.token = token
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}{BASE}"
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"token {token}"

    def url(self, path: str = "") -> str:
        return self.base + path.lstrip("/")

    def api(self, method: str, path: str = "", **kw) -> requests.Response:
        return self.s.request(method, self.url("hpcgate/api/apps" + path), timeout=300, **kw)

    def apps(self) -> dict[str, dict]:
        return {a["name"]: a for a in self.api("GET").json()["apps"]}

    def log(self, name: str) -> str:
        return self.api("GET", f"/{name}/log").text


def write_scalars(logdir: Path, tag: str, values: list[float]) -> None:
    """A TensorBoard event file with one scalar series, written with tensorboard's own
    writer (no TensorFlow needed)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(logdir))
    for step, value in enumerate(values):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()


def xwd_text_pixels(display: str, window: str = "xterm") -> int:
    """Dark pixels in the X window named ``window`` (xterm's text is black on white),
    read from the X server itself (``xwd``), independent of the browser."""
    raw = subprocess.run(["xwd", "-name", window, "-silent", "-display", display], capture_output=True, check=True).stdout
    header_size = int.from_bytes(raw[0:4], "big")
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    bpl = int.from_bytes(raw[48:52], "big")
    ncolors = int.from_bytes(raw[76:80], "big")
    data = raw[header_size + ncolors * 12 :]
    dark = 0
    for y in range(0, height, 2):
        row = data[y * bpl : y * bpl + width * 4]
        dark += sum(1 for x in range(0, len(row), 8) if row[x] < 60 and row[x + 1] < 60 and row[x + 2] < 60)
    return dark


XSTARTUP = "#!/bin/sh\nexec xterm\n"
APPS_FILE = """
webfiles:
  command: python3 -m http.server {port} --bind 127.0.0.1 --directory .
  title: Files over HTTP
  setup: ["echo from-setup-line > setup-ran.txt"]
detacher:
  # leaves a helper in a new session, as ssh-agent does under Xpra
  command: bash -c "setsid sleep 600 & exec python3 -m http.server {port} --bind 127.0.0.1"
  title: Detaching helper
frommodule:
  command: hpcgate-fake-tool {port}
  setup: ["export PATH={tools}:$PATH"]
  title: Program from a module
notthere:
  command: hpcgate-no-such-program --port {port}
  title: Missing program
  install: load the NoSuch module (module load nosuch)
"""


FAKE_TOOL = "#!/bin/sh\nexec python3 -m http.server \"$1\" --bind 127.0.0.1\n"


def start_lab(root: Path) -> Lab:
    """A lab server in ``root`` (home, runtime dir, apps file, a tool only a set-up
    line puts on PATH); returns once it answers."""
    home = root / "home"
    runtime = root / "runtime"
    tools = root / "modules" / "bin"
    for d in (home, runtime, home / "logs"):
        d.mkdir(mode=0o700)
    tools.mkdir(parents=True)
    (tools / "hpcgate-fake-tool").write_text(FAKE_TOOL)
    (tools / "hpcgate-fake-tool").chmod(0o755)
    (root / "xstartup").write_text(XSTARTUP)
    (root / "xstartup").chmod(0o755)
    (root / "apps.yaml").write_text(APPS_FILE.replace("{tools}", str(tools)))
    port = free_port()
    token = secrets.token_hex(16)
    cfg = root / "jupyter_server_config.py"
    cfg.write_text(
        # hpcgate serves the jupyter-server-proxy plugins; its own extension stays off
        server_config(port, home, ("jupyter_server_proxy", "jupyter_lsp"), base=BASE)
        + textwrap.dedent(
            f"""
            c.HPCGateLab.stop_grace_period = 5
            c.HPCGateLab.apps_file = {str(root / "apps.yaml")!r}
            c.HPCGateLab.app_setup = ["export HPCGATE_TEST_SETUP=global-setup-ran"]

            # a plugin-style app whose command function looks its program up, as
            # jupyter-tensorboard-proxy does, and raises when it is missing
            def _lookup_command(port):
                raise FileNotFoundError("Can not find hpcgate-no-such-tool executable in $PATH")

            c.ServerProxy.servers = {{"lookup": {{"command": _lookup_command, "timeout": 5}}}}
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
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(MLFLOW_BIN), env["PATH"]])
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter"), "server", f"--config={cfg}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    lab = Lab(root, port, token, proc)
    lab.home = home
    lab.runtime = runtime
    lab.path = env["PATH"]  # the lab's PATH, where it looks for the apps' programs

    def up():
        assert proc.poll() is None, (root / "server.log").read_text()
        return lab.s.get(lab.url("api/status"), timeout=2).ok

    wait_for(up, 60, "the lab server")
    return lab


def stop_lab(lab: Lab) -> None:
    lab.proc.terminate()
    try:
        lab.proc.wait(60)
    except subprocess.TimeoutExpired:
        lab.proc.kill()
    if os.environ.get("HPCGATE_SHOW_LAB_LOG"):
        print((lab.root / "server.log").read_text())
