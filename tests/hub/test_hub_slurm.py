"""The slurm backend end to end: a real JupyterHub, the sandbox's sshd, munge and Slurm.

Labs run as Slurm jobs on compute1; the hub reaches them only through the tunnel on
login1, and they reach the hub API only through its remote forward. Each test leaves
no server and no job of its own behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import stat
import sys
import time
from pathlib import Path

import pytest

from harness.hub import LOGIN_SHARED, Hub, hub_leaks, process_environ, wait_for
from harness.keyscan import cert_login_keys, files_holding, private_key_lines
from harness.sandbox import active_jobs, squeue, stop_hub_and_jobs
from tests.hub.identity.idtools import assert_secrets_hidden
from tests.hub.slurmtools import BROKEN_MARK, TOO_MANY_CPUS, TOO_MUCH_MEMORY, run_code

pytestmark = pytest.mark.sandbox

USERS = {"alice": "hpcg-alice", "bob": "hpcg-bob"}

EXTRA = """
c.HPCGate.catalog_check_interval = 0.2
# poll often, so that a controller outage meets many polls
c.Spawner.poll_interval = 3
c.JupyterHub.init_spawners_timeout = 1
"""


@pytest.fixture(scope="module")
def hub(sandbox, slurm_catalog, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("slurm-hub"), catalog=str(slurm_catalog), extra=EXTRA).start()
    yield hub
    stop_hub_and_jobs(hub, sandbox, USERS)


@pytest.fixture(autouse=True)
def nothing_left_running(hub, sandbox):
    """After each test, stop whatever server it left (a test that failed half-way) and
    cancel its accounts' jobs, so that one failure does not fail the tests after it
    ("alice is already running"). Tests check their own clean-up themselves."""
    yield
    for user, account in USERS.items():
        r = hub.get(f"/hub/api/users/{user}")
        if r.ok and r.json()["servers"]:
            hub.stop_server(user)
        for job in active_jobs(sandbox, account):
            sandbox.run_in("login", ["scancel", job["id"]], check=False)


@pytest.fixture
def blocker(sandbox):
    """Occupies CPUs of compute1 with a job of hpcg-bob; cancelled at the end."""
    jobs = []

    def block(cpus: int) -> str:
        out = sandbox.run_in(
            "login",
            ["sbatch", "--parsable", "-p", "debug", "-c", str(cpus), "-o", "/dev/null", "--wrap", "sleep 600"],
            user="hpcg-bob",
        ).stdout.strip()
        jobs.append(out)
        wait_for(lambda: any(j["id"] == out and j["state"] == "RUNNING" for j in squeue(sandbox)), 60, "the blocker job to run")
        return out

    yield block
    for job in jobs:
        sandbox.run_in("login", ["scancel", job], check=False)


def job_of(hub: Hub, user: str) -> str:
    return hub.user_model(user)["servers"][""]["state"]["job"]["job_id"]


def messages(events: list[dict]) -> str:
    return "\n".join(e.get("message", "") for e in events)


def spawn_outcome(hub: Hub, user: str, options: dict) -> tuple[int, str]:
    """Spawn and wait for the end; (HTTP status of the POST, what the user read)."""
    hub.create_user(user)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(hub.request, "POST", f"/hub/api/users/{user}/server", json={"user_options": options})
        response = None
        events: list[dict] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            server = hub.user_model(user)["servers"].get("")
            if server and server.get("pending") == "spawn":
                events = hub.progress(user)
                break
            if posted.done():
                break
            time.sleep(0.05)
        response = posted.result()
    text = response.text + "\n" + messages(events) + "\n" + "\n".join(e.get("html_message", "") for e in events)
    return response.status_code, text


def stop_all_and_check(hub: Hub, sandbox) -> None:
    """Stop every user's server; no job of theirs may be left in the queue."""
    for user in USERS:
        hub.stop_server(user)
    for account in USERS.values():
        assert not active_jobs(sandbox, account)


def assert_lab_works(hub: Hub, user: str) -> None:
    r = hub.get(f"/user/{user}/api/status")
    assert r.status_code == 200, r.text
    out = run_code(hub, user, "import os, socket; print(socket.gethostname(), os.getlogin() if False else os.getuid())")
    assert out.split()[0] == "compute1", out


def job_environ(job: str, account: str) -> dict[str, str]:
    """The environment of the job's server (compute1 shares our PID namespace)."""
    uid = pwd.getpwnam(account).pw_uid
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            env = process_environ(int(entry))
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and "JUPYTERHUB_SERVICE_URL" in env:
            return env
    raise AssertionError(f"no process of job {job} with the server's environment")


def assert_login_environment(hub: Hub, sandbox, job: str, account: str) -> None:
    """The job's server: the account's login environment on compute1 (bash -l), then the
    catalog's setup lines; nothing of the hub's environment."""
    env = job_environ(job, account)
    entry = pwd.getpwnam(account)
    assert (env["HOME"], env["USER"], env["SHELL"]) == (entry.pw_dir, account, entry.pw_shell)
    login_path = sandbox.run_in("compute", ["bash", "-l", "-c", 'printf %s "$PATH"'], user=account).stdout
    assert env["PATH"] == f"{sandbox.info.venv / 'bin'}:{login_path}"
    assert str(Path(sys.executable).parent) not in env["PATH"].split(":")
    assert env["LANG"]
    assert hub_leaks(env, hub.proc.pid, LOGIN_SHARED) == set()


def test_spawns_log_in_with_certificates_and_write_no_user_key(hub, sandbox):
    """The sandbox catalog's identity is ``certificate``: the job is submitted, the tunnel
    carried and the hub API forwarded by logins whose certificates sshd logged with the
    hub user and the system; none of their keys is in a file afterwards. First in this
    module: its spawn opens the hub's tunnel connection to the cluster."""
    log = sandbox.info.log_dir / "sshd.log"
    offset, started = log.stat().st_size, time.time() - 1
    response, _ = hub.spawn_with_progress("alice", {"system": "cluster"})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("alice")
    assert_lab_works(hub, "alice")
    # the CA's private key: in no process's argv (the hub's, the lab's, ssh's), in no log,
    # and the files holding it are private (the CA directory 0700, the key 0600)
    logs = [hub.log_path, log, sandbox.info.log_dir / "slurmctld.log"]
    assert_secrets_hidden(
        private_key_lines(sandbox.info.ca_key),
        "".join(path.read_bytes().decode(errors="replace") for path in logs),
        [hub.state_dir, sandbox.layout.ca_dir],
        running=[str(hub.state_dir), "hpcgate-singleuser"],
    )
    assert stat.S_IMODE(sandbox.layout.ca_dir.stat().st_mode) == 0o700
    hub.stop_server("alice")
    logins = cert_login_keys(log.read_bytes()[offset:].decode(errors="replace"))
    seen = set(logins.values())
    assert ("hpcg-alice", "hpcgate/alice@cluster") in seen, seen
    # the first spawn of this module's hub opened the cluster's tunnel connection
    assert ("hpcg-tunnel", "hpcgate/tunnel@cluster") in seen, seen
    assert files_holding(logins, hub.state_dir, Path("/tmp"), since=started) == []


def test_spawn_runs_on_a_compute_node_and_stop_cancels_the_job(hub, sandbox):
    response, events = hub.spawn_with_progress("alice", {"system": "cluster"})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("alice")
    text = messages(events)
    job = job_of(hub, "alice")
    assert f"Submitted: job {job}" in text
    assert "Running on compute1" in text, text
    assert "Server started on 10.250.2.2" in text
    assert "Tunnel up" in text
    assert events[-1].get("ready"), events[-1]
    running = [j for j in squeue(sandbox) if j["id"] == job]
    assert running and running[0]["state"] == "RUNNING" and running[0]["node"] == "compute1", running
    assert running[0]["user"] == "hpcg-alice"
    assert_lab_works(hub, "alice")
    assert_login_environment(hub, sandbox, job, "hpcg-alice")
    # hpcgate's metrics: every phase of the start, the tunnel carrying the server
    for phase in ("submit", "queue_wait", "lab_start", "tunnel", "routing"):
        assert hub.metric("hpcgate_spawn_phase_seconds_count", system="cluster", phase=phase) >= 1, phase
    assert hub.metric("hpcgate_running_servers", system="cluster", partition="debug") == 1
    assert hub.metric("hpcgate_tunnel_up", system="cluster") == 1
    assert hub.metric("hpcgate_tunnel_forwards", system="cluster") >= 1
    assert hub.metric("hpcgate_scheduler_query_seconds_count", system="cluster") >= 1
    # the token file was read and removed by the job
    run_id = hub.user_model("alice")["servers"][""]["state"]["job"]["extra"]["run_id"]
    left = sandbox.run_in("login", ["sh", "-c", "ls ~/.hpcgate/run"], user="hpcg-alice").stdout.split()
    assert f"{run_id}.env" not in left, left

    hub.stop_server("alice")
    assert not active_jobs(sandbox, "hpcg-alice")


def test_two_users_at_once(hub, sandbox):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        posts = [pool.submit(hub.spawn, user, {"system": "cluster"}) for user in USERS]
        for post in posts:
            assert post.result().status_code in (201, 202)
    for user in USERS:
        hub.wait_ready(user)
    jobs = {user: job_of(hub, user) for user in USERS}
    assert len(set(jobs.values())) == 2
    for user, account in USERS.items():
        assert [j["id"] for j in active_jobs(sandbox, account)] == [jobs[user]]
        assert_lab_works(hub, user)
    stop_all_and_check(hub, sandbox)


def test_controller_outage_stops_no_server(hub, sandbox):
    for user in USERS:
        hub.spawn(user, {"system": "cluster"})
    for user in USERS:
        hub.wait_ready(user)
    bob_job = job_of(hub, "bob")
    errors = hub.metric("hpcgate_scheduler_query_errors_total", system="cluster")
    sandbox.stop_slurmctld()
    try:
        # the outage lasts until the hub's status queries failed twice (each squeue waits
        # out Slurm's connect retries, ~10 s here; the cache backs off 4 s between them):
        # every spawner polls each 3 s meanwhile and gets UNKNOWN, from the failed queries
        # and from memory during the backoff; no server may stop
        def outage_seen() -> bool:
            for user in USERS:
                server = hub.user_model(user)["servers"].get("")
                assert server and server["ready"], f"{user}'s server was stopped during the outage:\n{hub.log_tail()}"
            return hub.metric("hpcgate_scheduler_query_errors_total", system="cluster") >= errors + 2

        wait_for(outage_seen, 120, "two failed status queries during the outage", interval=1)
        assert "unknown" in hub.log_tail(200_000).lower(), "the hub never saw the controller fail"
        # the labs themselves still answer through the tunnels
        for user in USERS:
            assert hub.get(f"/user/{user}/api/status").status_code == 200
    finally:
        sandbox.start_slurmctld()
    # polling works again: a job that ends now is noticed, the other server stays
    sandbox.run_in("login", ["scancel", bob_job], user="hpcg-bob")
    wait_for(lambda: "" not in hub.user_model("bob")["servers"], 180, "the hub to notice bob's job ended")
    assert hub.user_model("alice")["servers"][""]["ready"]
    assert_lab_works(hub, "alice")
    hub.stop_server("alice")
    assert not active_jobs(sandbox, "hpcg-alice")


def test_cancel_a_pending_spawn_removes_the_job(hub, sandbox, blocker):
    blocker(4)
    hub.create_user("alice")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(hub.spawn, "alice", {"system": "cluster"})
        pending = wait_for(
            lambda: [j for j in active_jobs(sandbox, "hpcg-alice") if j["state"] == "PENDING"], 60, "alice's job to queue"
        )
        # what the progress page's cancel button does
        r = hub.request("DELETE", "/hub/api/users/alice/server")
        assert r.status_code in (202, 204), r.text
        posted.result()
    wait_for(lambda: "" not in hub.user_model("alice")["servers"], 60, "alice's server to go")
    wait_for(lambda: not active_jobs(sandbox, "hpcg-alice"), 30, "alice's job to leave the queue")
    gone = [j for j in squeue(sandbox, ("hpcg-alice",)) if j["id"] == pending[0]["id"]]
    assert not gone or gone[0]["state"] == "CANCELLED", gone


def test_progress_shows_the_queue_reason(hub, sandbox, blocker):
    blocker(4)
    hub.create_user("alice")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(hub.spawn, "alice", {"system": "cluster"})
        wait_for(lambda: active_jobs(sandbox, "hpcg-alice"), 60, "alice's job to queue")
        # the reason shows once the scheduler has looked at the job
        wait_for(lambda: active_jobs(sandbox, "hpcg-alice")[0]["reason"] == "Resources", 60, "reason Resources")
        events = []
        with hub.get("/hub/api/users/alice/server/progress", stream=True, timeout=60) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:") and "Queued (Resources)" in line:
                    events.append(line)
                    break
        assert events
        hub.request("DELETE", "/hub/api/users/alice/server")
        posted.result()
    wait_for(lambda: not active_jobs(sandbox, "hpcg-alice"), 60, "alice's job to leave the queue")


def test_hub_restart_while_one_job_runs_and_one_is_pending(hub, sandbox, blocker):
    hub.spawn("bob", {"system": "cluster"})
    hub.wait_ready("bob")
    blocker(3)  # bob's lab holds 1 of compute1's 4 CPUs: alice's job has to wait
    hub.spawn("alice", {"system": "cluster"})
    wait_for(
        lambda: [j for j in active_jobs(sandbox, "hpcg-alice") if j["state"] == "PENDING"], 60, "alice's job to queue"
    )
    alice_job = job_of(hub, "alice")
    hub.stop()
    # the tunnels and pooled SSH connections were closed at shutdown, the jobs kept
    assert "Closed hpcgate's backends, tunnels and SSH connections" in hub.log_tail(200_000)
    # the pending job survives the hub's shutdown
    assert [j["id"] for j in active_jobs(sandbox, "hpcg-alice")] == [alice_job]
    hub.start()
    # free the node: alice's job starts now, with the hub back
    for job in [j for j in active_jobs(sandbox, "hpcg-bob") if j["id"] != job_of(hub, "bob")]:
        sandbox.run_in("login", ["scancel", job["id"]])
    wait_for(
        lambda: hub.user_model("alice")["servers"].get("", {}).get("ready"),
        180,
        f"alice's server to be ready after the restart:\n{hub.log_tail()}",
    )
    assert job_of(hub, "alice") == alice_job
    for user in USERS:
        assert hub.user_model(user)["servers"][""]["ready"]
        assert_lab_works(hub, user)
    stop_all_and_check(hub, sandbox)


def test_more_cpus_than_the_partition_has_fails_with_the_reason(hub, sandbox):
    status, text = spawn_outcome(hub, "alice", {"system": "cluster", "cpus": TOO_MANY_CPUS})
    assert "PartitionConfig" in text, text
    assert "was cancelled" in text
    assert not active_jobs(sandbox, "hpcg-alice")
    assert "" not in hub.user_model("alice")["servers"]


def test_more_memory_than_the_node_has_fails_with_sbatchs_words(hub, sandbox):
    status, text = spawn_outcome(hub, "alice", {"system": "cluster", "memory": TOO_MUCH_MEMORY})
    assert "Memory specification can not be satisfied" in text, text
    assert "Choose fewer resources" in text
    assert not active_jobs(sandbox, "hpcg-alice")


def test_a_job_that_exits_at_once_shows_its_log(hub, sandbox):
    status, text = spawn_outcome(hub, "alice", {"system": "cluster-broken"})
    assert "ended before it reported its address" in text, text
    assert "exit code 3" in text
    assert BROKEN_MARK in text
    assert not active_jobs(sandbox, "hpcg-alice")


@pytest.mark.parametrize(
    "options",
    [
        {"system": "cluster", "partition": "debug; touch /tmp/hpcgate-pwned"},
        {"system": "cluster", "cpus": "1 --wrap=id"},
        {"system": "cluster", "memory": "$(id)"},
        {"system": "cluster", "runtime": "10\n#SBATCH --uid=0"},
        {"system": "cluster", "project": "x' ; id ; '"},
        {"system": "cluster", "cpus": 10**9},
        {"system": "cluster", "extra": "--export=ALL"},
    ],
)
def test_hostile_options_never_reach_sbatch(hub, sandbox, options):
    before = {j["id"] for j in squeue(sandbox, ("hpcg-alice",))}
    hub.create_user("alice")
    r = hub.request("POST", "/hub/api/users/alice/server", json={"user_options": options})
    assert r.status_code == 400, r.text
    after = {j["id"] for j in squeue(sandbox, ("hpcg-alice",))}
    assert after == before
    assert "" not in hub.user_model("alice")["servers"]
