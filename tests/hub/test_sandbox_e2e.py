"""The ssh backend and the tunnels end to end: sandbox login node, real JupyterHub + CHP.

hub (root namespace) --tunnel as hpcg-tunnel--> login1 sshd --> JupyterLab of
hpcg-alice / hpcg-bob on login1's loopback; the labs reach the hub API through the
tunnel connection's remote forward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import pwd
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from harness.hub import LOGIN_SHARED, Hub, hub_leaks, process_environ, wait_for
from harness.missing import unavailable

USERS = ("alice", "bob")
OPTIONS = {"system": "login", "partition": "interactive"}


@pytest.fixture(scope="module")
def catalog_path(sandbox, tmp_path_factory) -> Path:
    info = sandbox.info
    data = yaml.safe_load(Path(info.catalog).read_text())
    down = json.loads(json.dumps(data["systems"]["login"]))
    down["description"] = "A login node whose sshd does not answer"
    down["ssh"]["port"] = 2222  # nothing listens there
    down["accounts"] = {"source": "hub_name"}
    data["systems"]["down"] = down
    data["groups"]["everyone"]["grants"].append({"system": "down"})
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def hub(catalog_path, tmp_path_factory):
    extra = "\n".join(
        [
            "c.HPCSpawner.start_timeout = 120",
            "c.TunnelManager.reconnect_max_delay = 2.0",
            "c.TunnelManager.connect_wait = 20.0",
        ]
    )
    hub = Hub(tmp_path_factory.mktemp("hub"), catalog=str(catalog_path), extra=extra).start()
    yield hub
    for user in USERS:
        hub.request("DELETE", f"/hub/api/users/{user}/server")
    hub.settle_stops(2)
    hub.stop()


def lab_status(hub: Hub, user: str) -> dict | None:
    """The lab's api/status through hub and tunnel, or None if it does not answer."""
    try:
        r = hub.get(f"/user/{user}/api/status", timeout=10)
    except requests.RequestException:
        return None
    return r.json() if r.status_code == 200 else None


async def run_code(hub: Hub, user: str, code: str) -> str:
    """Start a kernel through hub and tunnel, run ``code``, return its stdout."""
    headers = {"Authorization": f"token {hub.token}"}
    r = hub.request("POST", f"/user/{user}/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    url = hub.url.replace("http://", "ws://") + f"/user/{user}/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers=headers), max_message_size=64 << 20)
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        assert raw is not None, "the kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    ws.close()
    return "".join(out)


def lab_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the login namespace shares our PID namespace)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def exclusive_sandbox(sandbox, wait: float = 120) -> bool:
    """Wait until no other test session holds the sandbox (we are about to stop sshd)."""
    deadline = time.monotonic() + wait
    while sandbox.other_holders():
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True


def test_two_users_spawn_at_once_and_run_code(hub):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        posted = list(pool.map(lambda u: hub.spawn(u, OPTIONS), USERS))
    assert all(r.status_code in (201, 202) for r in posted), [r.text for r in posted]
    for user in USERS:
        server = hub.wait_ready(user, timeout=120)
        # JupyterHub routes to the hub side of the forward
        assert server["url"] == f"/user/{user}/"
        state = hub.user_model(user)["servers"][""]["state"]
        assert state["tunnel"]["host"] == "127.0.0.1" and state["job"]["host"] == "10.250.1.2"
    for user in USERS:
        status = wait_for(lambda user=user: lab_status(hub, user), 30, f"{user}'s lab api/status")
        assert "started" in status
        assert asyncio.run(run_code(hub, user, "import getpass; print(getpass.getuser(), 6 * 7)")).split() == [
            f"hpcg-{user}",
            "42",
        ]


def test_a_server_has_the_accounts_login_environment_and_nothing_of_the_hub(hub, sandbox):
    """The lab on the login node: the account's login shell environment (/etc/profile,
    ~/.profile), then the catalog's setup lines; nothing of the hub's environment."""
    pid = hub.user_model("alice")["servers"][""]["state"]["job"]["extra"]["pid"]
    env = process_environ(pid)
    account = pwd.getpwnam("hpcg-alice")
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
        account.pw_dir, "hpcg-alice", "hpcg-alice", account.pw_shell
    )
    login_path = sandbox.run_in("login", ["sh", "-l", "-c", 'printf %s "$PATH"'], user="hpcg-alice").stdout
    # the sandbox catalog's setup line puts the job venv first
    assert env["PATH"] == f"{sandbox.info.venv / 'bin'}:{login_path}"
    assert str(Path(sys.executable).parent) not in env["PATH"].split(":")
    assert env["LANG"]
    leaked = hub_leaks(env, hub.proc.pid, LOGIN_SHARED)
    assert leaked == set()


def test_one_user_cannot_reach_the_others_lab(hub):
    alice = hub.login("alice")
    # a page visit runs JupyterHub's OAuth dance with the lab, as a browser does
    own = alice.get(hub.url + "/user/alice/lab", timeout=30)
    assert own.status_code == 200 and "JupyterLab" in own.text, own.text[:300]
    assert alice.get(hub.url + "/user/alice/api/status", timeout=30).status_code == 200
    other = alice.get(hub.url + "/user/bob/lab", timeout=30)
    assert other.status_code == 403, other.status_code
    assert alice.get(hub.url + "/user/bob/api/status", timeout=30).status_code == 403
    # the forward's local port itself asks for credentials too
    port = hub.user_model("bob")["servers"][""]["state"]["tunnel"]["local_port"]
    direct = requests.get(f"http://127.0.0.1:{port}/user/bob/api/status", timeout=10)
    assert direct.status_code == 403


def test_labs_answer_again_after_the_jump_host_restarts(hub, sandbox):
    if not exclusive_sandbox(sandbox):
        unavailable(
            "other test sessions hold the sandbox; stopping its sshd would disturb them",
            "CI runs one test session, so a holder there is one left behind",
        )
    lost_before = hub.log_tail(10**7).count("lost its connection to 10.250.1.2:22")
    sandbox.stop_sshd(sessions=True)
    try:
        # the outage is real: the hub notices that its tunnel connection is gone
        wait_for(
            lambda: hub.log_tail(10**7).count("lost its connection to 10.250.1.2:22") > lost_before,
            30,
            "the hub to notice the lost tunnel connection",
        )
        time.sleep(2)
    finally:
        sandbox.start_sshd()
    for user in USERS:
        wait_for(lambda user=user: lab_status(hub, user), 60, f"{user}'s lab after the sshd restart")
        assert asyncio.run(run_code(hub, user, "print('back')")).strip() == "back"


def test_labs_answer_after_a_hub_restart(hub):
    before = {u: hub.user_model(u)["servers"][""]["state"]["tunnel"]["local_port"] for u in USERS}
    hub.stop()
    hub.start()
    for user in USERS:
        wait_for(lambda user=user: lab_status(hub, user), 60, f"{user}'s lab after the hub restart")
        assert hub.user_model(user)["servers"][""]["state"]["tunnel"]["local_port"] == before[user]
        assert asyncio.run(run_code(hub, user, "print(1 + 1)")).strip() == "2"


def test_an_unreachable_login_host_fails_the_spawn_naming_it(hub):
    # the failure comes within JupyterHub's slow_spawn_timeout: the POST answers it
    r = hub.spawn("carol", {"system": "down", "partition": "interactive"})
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert message.startswith("Cannot open the tunnel connection: cannot reach 10.250.1.2:2222: connection refused."), message
    assert "" not in hub.user_model("carol")["servers"]


def test_stop_leaves_no_process_behind(hub):
    trees = {}
    for user in USERS:
        pid = hub.user_model(user)["servers"][""]["state"]["job"]["extra"]["pid"]
        trees[user] = lab_tree(pid)
        # the lab, the kernels started above (in sessions of their own) and their children
        assert len(trees[user]) >= 2, trees[user]
    for user in USERS:
        hub.stop_server(user, timeout=60)
        left = [p for p in trees[user] if alive(p)]
        assert left == [], f"{user}: {left} still running after stop"
