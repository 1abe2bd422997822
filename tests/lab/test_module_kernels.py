"""Kernels from environment modules with the real Lmod (Debian's lmod), in a real
Jupyter server with hpcgate.lab, jupyterlmod and jupyter-resource-usage loaded.

The module tree is the sandbox's (hpcgate.sandbox.modules), written into a temporary
directory; its Python stack is this test environment's Python. The sandbox test
(tests/hub/test_modules_energy_slurm.py) runs the same through the hub and Slurm.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from tornado.websocket import websocket_connect

from harness.hub import execute_in_kernel, wait_for
from hpcgate.lab.kernels import parse_lmod_python
from hpcgate.net import free_port
from hpcgate.sandbox.layout import Layout
from hpcgate.sandbox.modules import BROKEN_MESSAGE, DEMO_VALUE, LMOD_CMD, kernels, write_modules

pytestmark = pytest.mark.skipif(
    not os.path.exists(LMOD_CMD), reason=f"Lmod is not installed ({LMOD_CMD}); scripts/install-system-deps.sh installs it"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("modlab")
    # the module tree with this environment's Python as the "python stack"
    lay = Layout(state_dir=root / "state", venv_dir=Path(sys.executable).parent.parent)
    tree = write_modules(lay)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "MODULEPATH": str(tree),
        "LMOD_CMD": LMOD_CMD,
        "HPCGATE_KERNELS": json.dumps({name: {**k, "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"} for name, k in kernels().items()}),
        "MEM_LIMIT": str(3 * 1024**3),
        "CPU_LIMIT": "2",
        "JUPYTER_TOKEN": token,
    }
    env.pop("HPCGATE_DEMO_MODULE", None)
    # a PATH without this venv: only the python-stack module puts a python3 with ipykernel there
    env["PATH"] = "/usr/bin:/bin"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
         "--allow-root", f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"token {token}"

    def up():
        try:
            return session.get(url + "/api/status", timeout=2).status_code == 200
        except requests.RequestException:
            assert proc.poll() is None, (root / "server.log").read_text()
            return False

    wait_for(up, 60, "the jupyter server")
    yield type("Server", (), {"url": url, "session": session, "token": token, "log": root / "server.log"})
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        # the kernels' behaviour is what these tests judge: end it and say so. Seen on a
        # loaded machine when a request was still in flight at SIGTERM: see
        # settle_requests() in the browser test
        print(f"jupyter_server did not stop within 60 s of SIGTERM; killed (log: {root / 'server.log'})")
        proc.kill()
        proc.wait(30)
    log.close()


def test_the_catalogs_kernels_are_offered(server):
    specs = server.session.get(server.url + "/api/kernelspecs", timeout=10).json()["kernelspecs"]
    assert specs["hpcgate-demo"]["spec"]["display_name"] == "Python (python-stack + hpcgate-demo)"
    assert specs["hpcgate-demo"]["spec"]["metadata"]["hpcgate"]["modules"] == ["python-stack/1.0", "hpcgate-demo/1.0"]
    assert "hpcgate-broken" in specs


def test_a_kernel_runs_with_its_modules_loaded(server):
    r = server.session.post(server.url + "/api/kernels", json={"name": "hpcgate-demo"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]

    async def run():
        ws = await websocket_connect(
            server.url.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels?token={server.token}"
        )
        try:
            return await execute_in_kernel(
                ws, "tester",
                "import os, sys; print(os.environ.get('HPCGATE_DEMO_MODULE')); print(os.environ['LOADEDMODULES']); print(sys.executable)",
            )
        finally:
            ws.close()

    out = asyncio.run(run()).splitlines()
    assert out[0] == DEMO_VALUE
    assert out[1] == "python-stack/1.0:hpcgate-demo/1.0"
    assert out[2].startswith(str(Path(sys.executable).parent)), "the kernel runs the python-stack module's Python"
    server.session.delete(server.url + f"/api/kernels/{kernel}", timeout=30)


def test_a_module_that_fails_gives_lmods_own_message(server):
    before = server.session.get(server.url + "/api/kernels", timeout=10).json()
    r = server.session.post(server.url + "/api/kernels", json={"name": "hpcgate-broken"}, timeout=60)
    assert r.status_code == 500
    message = r.json().get("message", "") + r.json().get("traceback", "")
    assert BROKEN_MESSAGE in message, message
    assert "Lmod has detected the following error" in message
    assert server.session.get(server.url + "/api/kernels", timeout=10).json() == before, "no dead kernel left"
    # JupyterLab starts kernels through a session: the same message reaches its dialog
    r = server.session.post(server.url + "/api/sessions", timeout=60, json={
        "path": "x.ipynb", "name": "x.ipynb", "type": "notebook", "kernel": {"name": "hpcgate-broken"}})
    assert r.status_code == 500 and BROKEN_MESSAGE in r.json()["message"], r.text
    assert server.session.get(server.url + "/api/kernels", timeout=10).json() == before, "no dead kernel left"


def test_jupyterlmod_lists_loads_and_unloads_modules(server):
    avail = server.session.get(server.url + "/module/modules", timeout=30)
    assert avail.status_code == 200, avail.text
    assert "hpcgate-demo/1.0" in avail.json()
    xsrf = {"X-XSRFToken": "x", "Cookie": "_xsrf=x"}
    r = server.session.post(server.url + "/module", json={"modules": ["hpcgate-demo/1.0"]}, headers=xsrf, timeout=30)
    assert r.status_code == 200, r.text
    assert "hpcgate-demo/1.0" in server.session.get(server.url + "/module", timeout=30).json()
    r = server.session.delete(server.url + "/module", json={"modules": ["hpcgate-demo/1.0"]}, headers=xsrf, timeout=30)
    assert "hpcgate-demo/1.0" not in server.session.get(server.url + "/module", timeout=30).json()


def test_resource_usage_counts_against_the_allocation(server):
    metrics = server.session.get(server.url + "/api/metrics/v1", timeout=30).json()
    assert metrics["limits"]["memory"]["rss"] == 3 * 1024**3
    assert metrics["limits"]["cpu"]["cpu"] == 2
    assert "cpu_percent" in metrics


def test_lmod_output_is_parsed_not_run():
    changed, removed = parse_lmod_python(
        'import os\nos.environ["A"] = "x \\"quoted\\"";\ndel os.environ["B"];\n__import__("os").system("false")\n_mlstatus = True\n'
    )
    assert changed == {"A": 'x "quoted"'} and removed == ["B"]


def test_the_allocation_comes_from_slurm_where_it_gives_one():
    from hpcgate.lab.allocation import allocation_env

    assert allocation_env({"SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_NODE": "2048"}) == {
        "CPU_LIMIT": "4", "MEM_LIMIT": str(2048 * 1024 * 1024)}
    assert allocation_env({"SLURM_CPUS_ON_NODE": "2", "SLURM_MEM_PER_CPU": "1000"})["MEM_LIMIT"] == str(2000 * 1024 * 1024)
    assert allocation_env({"MEM_LIMIT": "5", "SLURM_MEM_PER_NODE": "0"}) == {}, "the hub's values stay"
    assert allocation_env({"SLURM_CPUS_ON_NODE": "2(x2)"}) == {}


def test_kernels_are_checked_again_in_the_lab():
    from hpcgate.lab.kernels import kernels_from_env

    good = {"k": {"display_name": "K", "modules": ["a/1"], "argv": ["python3", "-f", "{connection_file}"]}}
    assert kernels_from_env(json.dumps(good))["k"]["language"] == "python"
    for bad, words in [
        ({"k": {**good["k"], "modules": ["a; rm -rf ~"]}}, "module names"),
        ({"k": {**good["k"], "argv": ["python3"]}}, "connection_file"),
        ({"../x": good["k"]}, "not a valid name"),
    ]:
        with pytest.raises(ValueError, match=words):
            kernels_from_env(json.dumps(bad))


def track_requests(page) -> set:
    """The page's HTTP requests not answered yet (kept up to date by Playwright's events)."""
    in_flight: set = set()
    page.on("request", lambda request: in_flight.add(request))
    page.on("requestfinished", lambda request: in_flight.discard(request))
    page.on("requestfailed", lambda request: in_flight.discard(request))
    return in_flight


def settle_requests(page, in_flight: set, timeout: float = 30) -> None:
    """Wait (up to ``timeout`` s) until JupyterLab has no request in flight, before the
    browser closes and the fixture stops the server.

    Why: a request still running at SIGTERM can keep jupyter_server from exiting at all.
    Handlers such as /api/nbconvert (which JupyterLab asks as a notebook opens) hop to
    AnyIO worker threads; jupyter_server stops its loop with the request's task pending,
    and AnyIO stops a worker thread (not a daemon) only when the task that started it
    ends, so the interpreter waits for that thread forever at exit (upstream:
    jupyterlab/jupyterlab#10442, agronholm/anyio#321; found with py-spy: the main thread
    in threading._shutdown, an idle "AnyIO worker thread" whose task is the nbconvert
    request)."""
    for _ in range(int(timeout * 10)):
        if not in_flight:
            return
        page.wait_for_timeout(100)
    print(f"JupyterLab still had {len(in_flight)} request(s) in flight after {timeout:.0f} s: "
          + ", ".join(sorted(r.url.split("?")[0] for r in in_flight)))


def test_jupyterlab_shows_the_kernels_and_lmods_error(server, artifacts_dir):
    """In the browser: the launcher's cards for the module kernels, and Lmod's message
    in JupyterLab's dialog when one cannot start."""
    from harness.hub import chromium

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        in_flight = track_requests(page)
        page.goto(f"{server.url}/lab?token={server.token}")
        card = page.locator(".jp-LauncherCard", has_text="Python (python-stack + hpcgate-demo)").first
        card.wait_for(timeout=60000)
        assert page.locator(".jp-LauncherCard", has_text="Python (broken module)").count() >= 1
        page.screenshot(path=str(artifacts_dir / "module-kernels-launcher.png"))
        page.locator(".jp-LauncherCard", has_text="Python (broken module)").first.click()
        dialog = page.locator(".jp-Dialog", has_text=BROKEN_MESSAGE)
        dialog.wait_for(timeout=60000)
        page.screenshot(path=str(artifacts_dir / "module-kernels-lmod-error.png"))
        assert "Lmod has detected the following error" in dialog.inner_text()
        settle_requests(page, in_flight)
