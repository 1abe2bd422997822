"""Fault injection against a real hub and the sandbox: nothing is lost, labs stay usable.

One hub, two labs (alice on the login node, bob as a Slurm job). The faults run in
order on the same hub: the controller stopped and restarted, the jump host's sshd and
sessions killed and restarted, the hub killed with SIGKILL (hub and proxy) and
restarted, the hub stopped cleanly with --keep-servers and restarted, a job cancelled
outside the hub. After each: no server lost, and every lab accepts a token created
after the fault. Hostile values go to every spawn option and every lab API parameter;
what is checked is the disk and the scheduler, not only the status code.

Recovery times are printed by ``make bench ARGS=faults``; nothing here asserts a time.
The disruptive faults need the sandbox to themselves: with other test sessions
holding it they are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import pytest

from harness.faults import (
    ACCOUNTS,
    LABS,
    cancel_outside,
    controller_outage,
    fault_catalog,
    fresh_token,
    hub_restart,
    lab_answer,
    servers,
    spawn_labs,
    sshd_outage,
    start_hub,
    stop_everything,
)
from harness.hub import Hub, wait_for
from harness.missing import unavailable
from harness.sandbox import squeue

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def hub(sandbox, tmp_path_factory):
    catalog = fault_catalog(sandbox, tmp_path_factory.mktemp("faults-catalog") / "catalog.yaml")
    hub = start_hub(tmp_path_factory.mktemp("faults-hub"), catalog)
    yield hub
    stop_everything(hub, sandbox)


def exclusive(sandbox, wait: float = 120) -> None:
    """Skip (saying why) unless no other test session holds the sandbox."""
    deadline = time.monotonic() + wait
    while sandbox.other_holders():
        if time.monotonic() > deadline:
            unavailable(
                "other test sessions hold the sandbox; this fault would disturb them",
                "CI runs one test session, so a holder there is one left behind",
            )
        time.sleep(2)


def file_tree(*roots: Path) -> set[str]:
    """Every path under ``roots`` (what a request must not change).

    Slurm's ``slurm-<id>.out`` files are left out: they come from jobs, and the tests
    check the jobs themselves (squeue); other sessions' jobs may end meanwhile."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            found.add(dirpath)
            found.update(os.path.join(dirpath, n) for n in filenames if not re.fullmatch(r"slurm-\d+\.out", n))
            # a lab's own runtime files come and go; they are not a request's doing
            dirnames[:] = [d for d in dirnames if d not in (".ipython", ".local", ".cache", ".jupyter")]
    return found


def homes() -> list[Path]:
    import pwd

    return [Path(pwd.getpwnam(a).pw_dir) for a in ACCOUNTS.values()]


def assert_labs_usable(hub: Hub, seen: dict) -> None:
    for user, result in seen.items():
        assert result["after"] is not None, f"{user}'s lab refused a fresh token: {result['last']}\n{hub.log_tail()}"


# --- hostile values first: they need users without a server ----------------------------

HOSTILE = [
    " debug", "debug ", "debug\n", "\tdebug", "de bug", "debug;id", "$(id)", "`id`", "../debug",
    "{{7*7}}", "debug\x00", "ｄebug", "", None, 1, 1.0, True, [], ["debug", "batch"], {"a": 1}, "a" * 5000,
]
NUMBERS = [" 1", "1 ", "1\n", "\n1", "1.0", 1.0, "0x1", "+1", "1e0", "١", -1, 0, 10**12, "1;id", True, [1, 2], {"n": 1}]


def _option_cases():
    for key in ("system", "partition", "project"):
        for value in HOSTILE:
            if value in ("", None) or (key == "partition" and value == []):
                continue  # the default applies: not hostile
            yield key, value
    for key in ("nodes", "cpus", "memory", "gpus", "runtime"):
        for value in NUMBERS:
            if not (key == "gpus" and value == 0):  # 0 GPUs is allowed
                yield key, value
    yield "image", "x"
    yield "__class__", "x"


def test_hostile_spawn_options_are_refused_with_a_sentence_and_change_nothing(hub, sandbox):
    hub.create_user("alice")
    jobs_before = {j["id"] for j in squeue(sandbox)}
    state_before = file_tree(hub.state_dir)
    homes_before = file_tree(*homes())
    refused = 0
    for key, value in _option_cases():
        options = {**LABS["bob"], key: value}
        r = hub.request("POST", "/hub/api/users/alice/server", json={"user_options": options})
        assert r.status_code == 400, (key, value, r.status_code, r.text[:300])
        message = r.json()["message"]
        assert message.endswith(".") and len(message) < 400, (key, value, message)
        assert "" not in hub.user_model("alice")["servers"], (key, value)
        refused += 1
    assert refused > 100
    # nothing reached the scheduler, the hub's state directory or the users' homes
    assert {j["id"] for j in squeue(sandbox)} == jobs_before
    # the hub's own database and log change with every request; nothing else may
    changed = file_tree(hub.state_dir) ^ state_before
    assert {p for p in changed if not p.endswith((".sqlite", ".sqlite-journal", "hub.log"))} == set()
    assert file_tree(*homes()) == homes_before


def test_both_labs_start(hub):
    spawn_labs(hub)
    for user in LABS:
        code, body = lab_answer(hub, user, fresh_token(hub, user))
        assert code == 200, (user, code, body)


# --- hostile lab API parameters -----------------------------------------------------------


def lab_api(hub: Hub, user: str, method: str, path: str, **kw):
    return hub.request(method, f"/user/{user}/hpcgate/api/apps{path}", **kw)


def test_hostile_lab_api_values_leave_nothing_behind(hub, sandbox):
    user = "alice"
    home = homes()[0]
    apps = lab_api(hub, user, "GET", "").json()["apps"]
    with_dirs = {a["name"]: p for a in apps for p, spec in a["parameters"].items() if spec["kind"] == "directory"}
    assert with_dirs, [a["name"] for a in apps]
    mark = f"hpcgate-fault-{secrets.token_hex(4)}"
    # a link in the work area that leads out of it
    escape = home / f"{mark}-link"
    escape.symlink_to("/tmp")
    try:
        values = [
            f"../../../{mark}", f"/{mark}", f"/tmp/{mark}", f"~root/{mark}", f"{escape.name}/{mark}",
            f"{mark}\n", f"{mark}\x00x", "\x1b[31m", 7, None, ["a"], {"a": "b"}, "a/" * 3000,
        ]
        roots = [home, Path("/tmp"), Path("/")]
        before = {r: set(os.listdir(r)) for r in roots}
        home_before = file_tree(home)
        states = {a["name"]: (a["state"], a["pid"]) for a in apps}
        for app, param in with_dirs.items():
            for action, method in (("/restart", "POST"), ("", "POST"), ("/new", "POST")):
                for value in values:
                    r = lab_api(hub, user, method, f"/{app}{action}", json={"parameters": {param: value}})
                    assert r.status_code in (400, 503), (app, action, value, r.status_code, r.text[:300])
                    assert r.json()["message"], (app, action, value)
                # unknown parameter, bad bodies
                for body in ({"parameters": {"nope": "x"}}, {"parameters": "x"}, {"params": {}}, [], "x"):
                    r = lab_api(hub, user, method, f"/{app}{action}", data=json.dumps(body))
                    assert r.status_code in (400, 503), (app, action, body, r.status_code, r.text[:300])
        after = {r: set(os.listdir(r)) for r in roots}
        # other processes on this machine write to /tmp meanwhile: there only our mark counts
        assert after[home] == before[home] and after[Path("/")] == before[Path("/")]
        assert not [n for r in roots for n in after[r] if mark in n and n != escape.name]
        assert file_tree(home) == home_before
        assert not [p for p in file_tree(Path("/tmp")) if mark in p]
        now = {a["name"]: (a["state"], a["pid"]) for a in lab_api(hub, user, "GET", "").json()["apps"]}
        assert now == states  # nothing started or stopped
    finally:
        escape.unlink()


# --- faults -----------------------------------------------------------------------------


def test_controller_stopped_and_restarted_loses_no_server(hub, sandbox):
    exclusive(sandbox)
    result = controller_outage(sandbox, hub, down_for=8)
    assert all(result["during"][u] for u in LABS), result["during"]
    assert all(servers(hub)[u].get("ready") for u in LABS)
    assert_labs_usable(hub, result["labs"])


def test_jump_host_sshd_killed_and_restarted(hub, sandbox):
    exclusive(sandbox)
    before = servers(hub)
    result = sshd_outage(sandbox, hub, down_for=6)
    # the request sent during the outage waited for the reconnect and was answered
    assert all(code == 200 for code, _ in result["in_flight"].values()), result["in_flight"]
    # the first new connection on each tunnel after sshd is back holds
    assert all(code == 200 for answers in result["first"].values() for code, _ in answers), result["first"]
    assert_labs_usable(hub, result["labs"])
    assert all(s.get("ready") for s in servers(hub).values()) and servers(hub).keys() == before.keys()
    log = hub.log_tail(10**7)
    assert "socket hang up" not in log, log[-3000:]


@pytest.mark.parametrize("kind", ["sigkill", "sigterm"])
def test_hub_restart_keeps_every_server_and_its_hub_api(hub, sandbox, kind):
    exclusive(sandbox)
    log_before = len(hub.log_tail(10**8))
    result = hub_restart(hub, kind)
    assert result["after"] == result["before"], result
    assert_labs_usable(hub, result["labs"])
    log = hub.log_tail(10**8)[log_before - 100 if log_before > 100 else 0 :]
    for system in ("login", "cluster"):
        assert f"Restored the hub API forward of {system}" in log, log[-4000:]
    for user in LABS:
        assert f"Restored the forward of {user}/" in log, log[-4000:]


def test_job_cancelled_outside_the_hub_is_reported_with_its_reason(hub, sandbox):
    exclusive(sandbox)
    result = cancel_outside(sandbox, hub, "bob")
    # the other lab is not lost and still takes fresh tokens
    assert servers(hub)["alice"].get("ready")
    code, body = lab_answer(hub, "alice", fresh_token(hub, "alice"))
    assert code == 200, body
    # bob reads why on his home page
    session = hub.login("bob")
    page = session.get(hub.url + "/hub/home", timeout=30)
    assert page.status_code == 200
    assert "hpcgate-stop-reason" in page.text and f"job {result['job']}" in page.text, page.text[-2000:]
    wait_for(lambda: not [j for j in squeue(sandbox, ("hpcg-bob",)) if j["id"] == result["job"] and j["state"] == "RUNNING"],
             30, "the job to leave the queue")
