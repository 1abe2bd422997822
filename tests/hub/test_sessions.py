"""Several sessions per user through a real hub: limits from the catalog (one sentence
for the form and the REST API), the session cards' API, relaunch with the kept options,
the form pre-filled per system, and the lab asking the hub about its own session."""

from __future__ import annotations

import json
import re
import time

import pytest

from harness.hub import Hub, wait_for

#: Two systems on this machine: a "login node" (one session per user) and a "compute"
#: partition; two sessions per user at once in all.
CATALOG = """
systems:
  login:
    kind: local
    description: Login node (starts at once)
    workdir: "{state_dir}/users/{account}"
    sessions_per_user: 1
    partitions:
      interactive:
        description: Shared login node
        limits:
          cpus: {min: 1, default: 1, max: 2}
          memory: {min: 1, default: 1, max: 2}
          runtime: {min: 1, default: 30, max: 60}
  compute:
    kind: local
    description: Compute partition (this machine again)
    workdir: "{state_dir}/users/{account}"
    partitions:
      batch:
        description: Whole nodes
        limits:
          cpus: {min: 1, default: 2, max: 2}
          memory: {min: 1, default: 2, max: 4}
          runtime: {min: 1, default: 60, max: 120}
sessions: {per_user: 2, remembered: 5}
groups:
  everyone:
    all_users: true
    grants: [{system: login}, {system: compute}]
defaults: {system: login}
"""

#: A slow site hook (as an auth-state refresh or a directory lookup would be) for one
#: user: two starts sent at once are then both pending before either checks the limit.
SLOW_PRE_SPAWN = """
import asyncio

async def _slow_pre_spawn(spawner):
    if spawner.user.name == "cory":
        await asyncio.sleep(1)

c.Spawner.pre_spawn_hook = _slow_pre_spawn
# JupyterHub polls each server every 30 s by default: a session's end at its runtime
# (test_a_local_session_ends_at_its_runtime) is found by a poll, so poll often
c.Spawner.poll_interval = 3
"""

PER_SYSTEM = "You have 1 session(s) starting or running on login, the most it allows per user (1)."
TOTAL = "You have 2 session(s) starting or running, the most you may have at once (2)."


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("sessions-hub")
    catalog = state / "catalog.yaml"
    catalog.write_text(CATALOG)
    hub = Hub(state / "hub", catalog=str(catalog), extra=SLOW_PRE_SPAWN).start()
    yield hub
    for name in ("a", "b", "c"):
        hub.request("DELETE", f"/hub/api/users/sam/servers/{name}")
    hub.stop()


def start(hub: Hub, name: str, options: dict | None):
    body = {} if options is None else {"user_options": options}
    return hub.request("POST", f"/hub/api/users/sam/servers/{name}", json=body, timeout=60)


def wait_running(hub: Hub, name: str) -> dict:
    def ready():
        server = hub.user_model("sam")["servers"].get(name)
        if server and server.get("ready"):
            return server
        assert server and server.get("pending"), f"session {name} is gone:\n{hub.log_tail()}"
        return None

    return wait_for(ready, 120, f"session {name} to run")


def sessions(hub: Hub) -> dict[str, dict]:
    r = hub.get("/hub/api/hpcgate/users/sam/sessions")
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()["sessions"]}


def test_limits_cards_relaunch_and_the_lab_session(hub):
    hub.create_user("sam")
    r = start(hub, "a", {"system": "login", "partition": "interactive", "cpus": 2, "runtime": 20})
    assert r.status_code in (201, 202), r.text
    wait_running(hub, "a")
    # the login system allows one session per user: a second one there is refused, with a sentence
    r = start(hub, "b", {"system": "login"})
    assert r.status_code == 400 and PER_SYSTEM in r.json()["message"], r.text
    # another system is fine: a lab on the login node and one on the compute partition
    r = start(hub, "b", {"system": "compute", "partition": "batch", "memory": 3})
    assert r.status_code in (201, 202), r.text
    wait_running(hub, "b")
    r = start(hub, "c", {"system": "compute"})
    assert r.status_code == 400 and TOTAL in r.json()["message"], r.text

    cards = sessions(hub)
    a = cards["a"]
    assert a["state"] == "running" and a["system"] == "login" and a["partition"] == "interactive"
    assert a["system_description"] == "Login node (starts at once)"
    assert a["resources"] == {"nodes": 1, "cpus": 2, "memory": 1, "gpus": 0, "runtime": 20}
    assert a["core_hours"] == round(2 * 20 / 60, 2)
    assert a["job_id"] and a["node"]
    # the end of a local session is its start plus the runtime asked for (the hub ends it then)
    assert a["end_time"] == pytest.approx(a["started"] + 20 * 60, abs=1)
    assert cards["b"]["resources"]["memory"] == 3
    # the refused "c" is a stopped card that says why
    assert cards["c"]["state"] == "stopped"
    assert cards["c"]["stop_reason"] == "The last start failed: " + TOTAL + " Stop one of them on your home page, then launch again."

    # another user sees nothing of sam's sessions; sam's own cookie does
    other = hub.login("tom")
    assert other.get(hub.url + "/hub/api/hpcgate/users/sam/sessions", timeout=10).status_code == 404
    own = hub.login("sam")
    assert own.get(hub.url + "/hub/api/hpcgate/users/sam/sessions", timeout=10).status_code == 200

    # the lab learns system, node, job id and end time from the hub, with its own token
    lab = hub.get("/user/sam/a/hpcgate/api/session")
    assert lab.status_code == 200, lab.text
    info = lab.json()
    assert info["system"] == "login" and info["job_id"] == a["job_id"] and info["node"] == a["node"]
    assert info["end_time"] == pytest.approx(a["end_time"], abs=1) and info["state"] == "running"
    # the hub's endpoint takes only a server's own token, not a user's
    r = hub.get("/hub/api/hpcgate/session")
    assert r.status_code == 403

    # stop "a", relaunch it with no options: it comes back with the same ones
    r = hub.request("DELETE", "/hub/api/users/sam/servers/a")
    assert r.status_code in (202, 204)
    wait_for(lambda: sessions(hub)["a"]["state"] == "stopped", 60, "session a to stop")
    r = start(hub, "a", None)
    assert r.status_code in (201, 202), r.text
    server = wait_running(hub, "a")
    assert server["user_options"]["cpus"] == 2 and server["user_options"]["runtime"] == 20

    # the form of a new session opens with the user's last launch, and per system with
    # the last choice there; over the limit it shows the same sentence as the REST API
    page = own.get(hub.url + "/hub/spawn/sam/d", timeout=10)
    remembered = json.loads(
        re.search(r'<script type="application/json" id="hpcgate-remembered">(.*?)</script>', page.text, re.S).group(1)
    )
    assert remembered["compute"]["memory"] == 3 and remembered["login"]["cpus"] == 2
    assert '<option value="login" selected>' in page.text  # "a" was launched last
    assert "You have 2 of at most 2 sessions starting or running" in page.text
    data = {"system": "compute", "partition": "batch", "_xsrf": own.cookies.get("_xsrf")}
    r = own.post(hub.url + "/hub/spawn/sam/d", data=data, timeout=30, allow_redirects=False)
    assert r.status_code == 400 and TOTAL in r.text.replace("&#39;", "'")


@pytest.fixture(scope="module", autouse=True)
def short_session(hub):
    """rita's one-minute session on compute (test_a_local_session_ends_at_its_runtime,
    the last test here), started and ready before this module's tests: its minute runs
    while they do. Its only user is rita; no other test looks at her or at all users."""
    hub.create_user("rita")
    r = hub.request(
        "POST", "/hub/api/users/rita/servers/short",
        json={"user_options": {"system": "compute", "runtime": 1}}, timeout=60,
    )
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: hub.user_model("rita")["servers"].get("short", {}).get("ready"), 120, "rita's session")


def test_two_starts_at_once_pass_the_limit_once(hub):
    """Two REST starts sent at the same moment on a system that allows one session per
    user: exactly one runs, the other is refused with the limit's sentence (the check
    and the reservation of the slot are one step per user, not two)."""
    import threading

    hub.create_user("cory")
    barrier = threading.Barrier(2)
    answers: dict[str, object] = {}

    def send(name: str) -> None:
        barrier.wait()
        answers[name] = hub.request(
            "POST", f"/hub/api/users/cory/servers/{name}",
            json={"user_options": {"system": "login"}}, timeout=60,
        )

    threads = [threading.Thread(target=send, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    try:
        codes = {name: r.status_code for name, r in answers.items()}
        ok = [n for n, c in codes.items() if c in (201, 202)]
        refused = [n for n, c in codes.items() if c == 400]
        assert len(ok) == 1 and len(refused) == 1, (codes, {n: r.text for n, r in answers.items()})
        assert PER_SYSTEM in answers[refused[0]].json()["message"]
        server = wait_for(
            lambda: (hub.user_model("cory")["servers"].get(ok[0]) or {}).get("ready") and True, 120, "the one session"
        )
        assert server
        assert refused[0] not in {n for n, s in hub.user_model("cory")["servers"].items() if s.get("ready")}
    finally:
        for name in ("x", "y"):
            hub.request("DELETE", f"/hub/api/users/cory/servers/{name}")


def test_a_local_session_ends_at_its_runtime(hub):
    # (started by the short_session fixture) a poll (every 3 s here) after its minute
    # is over ends the session
    wait_for(lambda: "short" not in hub.user_model("rita")["servers"], 150, "the session to end at its runtime")
    card = {s["name"]: s for s in hub.get("/hub/api/hpcgate/users/rita/sessions").json()["sessions"]}["short"]
    assert card["state"] == "stopped"
    assert "its runtime of 1 minutes was over" in card["stop_reason"]
    assert time.time() - card["last_activity"] < 600
