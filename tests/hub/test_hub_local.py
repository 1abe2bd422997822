"""The foundation against a real JupyterHub and configurable-http-proxy (local backend)."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from harness.hub import Hub, hub_leaks, process_environ, wait_for
from tests.pgtools import new_database

CATALOG = textwrap.dedent(
    f"""
    systems:
      local:
        kind: local
        description: This machine
        workdir: "{{state_dir}}/users/{{account}}"
        power: {{watts_per_cpu: 3600, watts_per_gpu: 0}}
        partitions:
          interactive:
            limits:
              cpus: {{min: 1, default: 1, max: 2}}
              memory: {{min: 1, default: 1, max: 4}}
              runtime: {{min: 10, default: 60, max: 240}}
      broken:
        kind: local
        description: A system whose servers fail at once
        singleuser_command: ["{sys.executable}", "-c", "import sys; print('hpcgate-test-failure: no lab here'); sys.exit(3)"]
        partitions:
          p: {{}}
    groups:
      everyone:
        all_users: true
        grants:
          - system: local
          - system: broken
    defaults:
      system: local
    carbon: {{intensity: 100}}
    apps:
      workdir-files:
        title: Files of the working directory
        setup: ["printf 'set up by %s' catalog > hpcgate-app-marker.txt"]
        command: ["{sys.executable}", "-m", "http.server", "--bind", "127.0.0.1", "{{port}}"]
        ready_check: {{path: /, status: 200}}
      withdrawn:
        command: never-started {{port}}
    """
).replace(
    "    partitions:\n      interactive:",
    "    apps:\n      withdrawn: null\n    partitions:\n      interactive:",
    1,
)


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    assert "withdrawn: null" in CATALOG
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(CATALOG)
    return path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request, tmp_path_factory, catalog_path):
    """The hub on each database: SQLite (the embedded default) and a real PostgreSQL."""
    extra = "c.HPCGate.catalog_check_interval = 0.2"
    db_url = new_database(request.getfixturevalue("postgres")) if request.param == "postgresql" else None
    hub = Hub(tmp_path_factory.mktemp("hub"), catalog=str(catalog_path), extra=extra, admins=("ada",),
              db_url=db_url).start()
    hub.database = request.param
    yield hub
    for user in hub.get("/hub/api/users").json():
        if user["servers"]:
            hub.request("DELETE", f"/hub/api/users/{user['name']}/server")
    hub.settle_stops(1)
    hub.stop()


def job_pid(hub: Hub, user: str) -> int:
    return int(hub.user_model(user)["servers"][""]["state"]["job"]["job_id"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_login_and_offer(hub):
    assert requests.get(hub.url + "/hub/api/hpcgate/offer", timeout=10).status_code == 403
    session = hub.login("olga")
    offer = session.get(hub.url + "/hub/api/hpcgate/offer", timeout=10).json()
    assert [s["name"] for s in offer["systems"]] == ["local", "broken"]
    local = offer["systems"][0]
    assert local["kind"] == "local"
    assert local["partitions"][0]["name"] == "interactive"
    assert local["partitions"][0]["limits"]["cpus"] == {"min": 1, "default": 1, "max": 2}
    assert local["projects"] == []


def test_the_login_page_says_how_to_log_in_without_the_password(hub):
    page = requests.get(hub.url + "/hub/login", timeout=10).text
    assert "log in with any user name and the password" in page
    assert str(hub.state_dir / "demo-password") in page and "Admins (ada)" in page
    assert hub.password not in page and hub.admin_password not in page


def test_the_admin_logs_in_with_the_admin_password_and_reaches_the_admin_page(hub):
    assert (hub.state_dir / "admin-password").stat().st_mode & 0o777 == 0o600
    assert len(hub.admin_password) >= 32 and hub.admin_password != hub.password
    session = hub.login("ada", hub.admin_password)
    page = session.get(hub.url + "/hub/admin", timeout=10)
    assert page.status_code == 200 and page.url.endswith("/hub/admin")
    assert session.get(hub.url + "/hub/api/users", timeout=10).status_code == 200
    assert session.get(hub.url + "/hub/api/user", timeout=10).json()["admin"] is True
    # the users' shared password does not make anyone the admin, nor an admin of anyone
    _, refused = hub.try_login("ada", hub.password)
    assert refused.status_code == 403 and "Invalid username or password" in refused.text
    olga = hub.login("olga")
    assert olga.get(hub.url + "/hub/api/users", timeout=10).status_code == 403


def test_spawn_through_the_form(hub):
    session = hub.login("fiona")
    page = session.get(hub.url + "/hub/spawn", timeout=10)
    assert 'id="hpcgate-form"' in page.text
    assert 'name="partition"' in page.text
    data = {"system": "local", "partition": "interactive", "cpus": "2", "memory": "3", "runtime": "30",
            "_xsrf": session.cookies.get("_xsrf")}
    r = session.post(hub.url + "/hub/spawn", data=data, timeout=30, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    server = hub.wait_ready("fiona")
    assert server["user_options"] == {"system": "local", "partition": "interactive", "project": None,
                                      "nodes": 1, "cpus": 2, "memory": 3, "gpus": 0, "runtime": 30,
                                      "reservation": None}
    status = hub.get("/user/fiona/api/status")
    assert status.status_code == 200 and "last_activity" in status.json()
    # the browser session reaches the lab through the proxy (OAuth with the hub)
    lab = session.get(hub.url + "/user/fiona/lab", timeout=30)
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.text[:300]
    assert session.get(hub.url + "/user/fiona/api/status", timeout=30).status_code == 200
    hub.stop_server("fiona")


@pytest.mark.parametrize(
    "field, value, sentence",
    [
        ("cpus", "2; touch /tmp/pwned", "The cpus must be a whole number"),
        ("partition", "{{7*7}}", "is not a valid name"),
        ("memory", "9999", "allows memory from 1 to 4 GiB"),
    ],
)
def test_form_shows_a_sentence_for_invalid_values(hub, field, value, sentence):
    session = hub.login("gina")
    session.get(hub.url + "/hub/spawn", timeout=10)
    data = {"system": "local", "partition": "interactive", field: value, "_xsrf": session.cookies.get("_xsrf")}
    r = session.post(hub.url + "/hub/spawn", data=data, timeout=30, allow_redirects=False)
    assert r.status_code == 400
    assert sentence in r.text
    assert 'id="hpcgate-form"' in r.text  # the form is shown again
    assert "{{7*7}}" not in r.text or "&#39;{{7*7}}&#39;" in r.text or "&#x27;{{7*7}}&#x27;" in r.text
    assert "" not in hub.user_model("gina")["servers"]


def test_rest_spawn_progress_status_and_stop(hub):
    r, events = hub.spawn_with_progress("alice", {"system": "local", "partition": "interactive", "cpus": 2})
    assert r.status_code in (201, 202), r.text
    messages = [e["message"] for e in events]
    text = "\n".join(messages)
    assert re.search(r"\[\s*\d+\.\d s\] Submitting to This machine", text)
    assert re.search(r"Submitted: job \d+", text)
    assert "Server started on 127.0.0.1, port" in text
    # the node the lab named in its address report (no status query; the local
    # backend's own status would say "localhost")
    assert f"Running on {socket.gethostname()}" in text, text
    assert events[-1].get("ready") is True
    # the lab's activity report goes through hpcgate.hub.activity (JupyterHub's handler
    # first, then a word to the start): it is recorded, never a server error
    activity = re.compile(r"(\d{3}) POST /hub/api/users/alice/activity ")
    answers = wait_for(lambda: activity.findall(hub.log_tail(1 << 20)), 60, "the lab's first activity report")
    assert set(answers) == {"200"}, answers
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert hub.get("/user/alice/api/status").status_code == 200
    pid = job_pid(hub, "alice")
    assert pid_alive(pid)
    hub.stop_server("alice")
    wait_for(lambda: not pid_alive(pid), 10, "the server process to end")


def test_energy_of_a_running_and_a_stopped_session(hub):
    session = hub.login("erin")
    url = hub.url + "/hub/api/hpcgate/energy"
    assert requests.get(url, timeout=10).status_code == 403
    assert session.get(url, timeout=10).json() == {"sessions": {"": None}}, "no session ran yet"
    assert hub.spawn("erin", {"system": "local", "cpus": 2}).status_code in (201, 202)
    hub.wait_ready("erin")
    running = session.get(url, timeout=10).json()["sessions"][""]
    assert running["running"] is True and running["method"] == "estimate" and running["estimate"] is True
    assert running["intensity_g_per_kwh"] == 100 and running["intensity_source"] == "catalog"
    hub.stop_server("erin")
    ended = session.get(url, timeout=10).json()["sessions"][""]
    assert ended["running"] is False
    # 2 cores at 3600 W each: 2 Wh per second of the session, 0.2 g CO2e per Wh at 100 g/kWh
    assert ended["energy_wh"] == pytest.approx(2 * ended["elapsed_s"], abs=0.2)
    assert ended["elapsed_s"] > 0
    assert ended["co2_g"] == pytest.approx(ended["energy_wh"] / 10, rel=0.01)
    later = session.get(url, timeout=10).json()["sessions"][""]
    assert later["energy_wh"] == ended["energy_wh"], "a stopped session's energy does not grow"
    # the home page's session card carries the same figure
    card = hub.get("/hub/api/hpcgate/users/erin/sessions").json()["sessions"][0]
    assert card["state"] == "stopped" and card["energy"]["energy_wh"] == ended["energy_wh"]
    assert "(estimate)" in card["energy"]["label"]


#: What a local server may take from the hub's environment (the session's variables).
SESSION = {"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "USER", "LOGNAME", "SHELL"}


def test_a_local_server_has_the_users_session_environment_and_nothing_of_the_hub(hub):
    assert hub.spawn("emil", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("emil")
    try:
        env = process_environ(job_pid(hub, "emil"))
        account = pwd.getpwuid(os.getuid())
        assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
            account.pw_dir, account.pw_name, account.pw_name, account.pw_shell
        )
        # the server's own Python environment first (pip and jupyter in a notebook are its)
        assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
        assert "/usr/bin" in env["PATH"].split(":")
        assert env.get("LANG") or any(k.startswith("LC_") for k in env)
        # the hub's own environment stays with the hub (proxy token, test runner's variables...)
        leaked = hub_leaks(env, hub.proc.pid, SESSION)
        assert leaked == set()
        assert "CONFIGPROXY_AUTH_TOKEN" not in env and "JPY_COOKIE_SECRET" not in env
        # plugins that look their program up on PATH are there and usable: the remote
        # desktop's (vncserver, at load time; TigerVNC is installed for the tests) and the
        # third-party TensorBoard's (tensorboard, in the server's environment)
        apps = {a["name"]: a for a in hub.get("/user/emil/hpcgate/api/apps").json()["apps"]}
        assert "desktop-websockify" in apps, sorted(apps)
        assert apps["tensorboard"]["available"] is True, apps["tensorboard"]["missing"]
        # and a notebook's `!pip` is the server's environment's pip
        shell = subprocess.run(
            ["sh", "-c", "command -v pip"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert shell == str(Path(sys.executable).parent / "pip")
    finally:
        hub.stop_server("emil")


def test_catalog_apps_run_beside_the_lab_with_their_setup(hub):
    """An app the catalog defines reaches the user's lab (HPCGATE_APPS), runs after its
    setup lines in the server's working directory, and is proxied under its name."""
    assert hub.spawn("nina", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("nina")
    try:
        apps = {a["name"]: a for a in hub.get("/user/nina/hpcgate/api/apps").json()["apps"]}
        assert "workdir-files" in apps and "withdrawn" not in apps
        assert apps["workdir-files"]["launcher_entry"]["title"] == "Files of the working directory"
        assert apps["workdir-files"]["source"] == "the hub's catalog"
        r = hub.get("/user/nina/workdir-files/hpcgate-app-marker.txt", timeout=180)
        assert r.status_code == 200 and r.text == "set up by catalog"
        state = hub.get("/user/nina/hpcgate/api/apps").json()["apps"]
        assert next(a for a in state if a["name"] == "workdir-files")["state"] == "running"
    finally:
        hub.stop_server("nina")


def test_rest_rejects_invalid_options_with_400(hub):
    r = hub.spawn("henry", {"cpus": 64})
    assert r.status_code == 400
    assert r.json()["message"] == "Partition interactive allows cpus from 1 to 2; you asked for 64."
    r = hub.spawn("henry", {"gpu_type": "a100"})
    assert r.status_code == 400 and "Unknown option 'gpu_type'" in r.json()["message"]


def test_failed_server_shows_reason_and_log_tail(hub):
    r, events = hub.spawn_with_progress("ivan", {"system": "broken"})
    assert r.status_code == 500, r.text
    failed = events[-1]
    assert failed.get("failed") is True
    assert "ended before it reported its address (exit code 3)" in failed["message"]
    assert "hpcgate-test-failure: no lab here" in failed["html_message"]
    assert "" not in hub.user_model("ivan")["servers"]


def test_catalog_changes_apply_without_restart(hub, catalog_path):
    session = hub.login("kim")

    def partitions():
        offer = session.get(hub.url + "/hub/api/hpcgate/offer", timeout=10).json()
        return [p["name"] for p in offer["systems"][0]["partitions"]]

    assert partitions() == ["interactive"]
    changed = CATALOG.replace("      interactive:", "      extra: {}\n      interactive:", 1)
    assert changed != CATALOG
    catalog_path.write_text(changed)
    wait_for(lambda: partitions() == ["extra", "interactive"], 10, "the new partition in the offer")
    catalog_path.write_text("systems: [this is broken")
    time.sleep(0.5)
    assert partitions() == ["extra", "interactive"]  # the last good catalog stays
    assert "Keeping the last good catalog" in hub.log_tail(20000)
    catalog_path.write_text(CATALOG)
    wait_for(lambda: partitions() == ["interactive"], 10, "the catalog to be restored")


def test_state_is_in_the_chosen_database(hub, request):
    """The hub really uses the database it was given (no silent SQLite fallback)."""
    hub.create_user("quinn")
    sqlite = hub.state_dir / "jupyterhub.sqlite"
    if hub.database == "sqlite":
        assert sqlite.exists()
        return
    assert not sqlite.exists()
    postgres = request.getfixturevalue("postgres")
    name = hub.db_url.rsplit("/", 1)[1]
    users = postgres.psql("SELECT name FROM users ORDER BY name", database=name).stdout.split()
    assert "quinn" in users
    # the URL holds a password: it is in no file of the state directory and not in the log
    password = hub.db_url.split(":")[2].split("@")[0]
    for path in hub.state_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_hub_restart_keeps_running_servers_and_drops_dead_ones(hub):
    for user in ("lena", "mark"):
        assert hub.spawn(user, {"cpus": 1}).status_code in (201, 202)
    for user in ("lena", "mark"):
        hub.wait_ready(user)
    lena, mark = job_pid(hub, "lena"), job_pid(hub, "mark")
    hub.stop()
    assert pid_alive(lena) and pid_alive(mark)
    os.killpg(mark, signal.SIGKILL)
    wait_for(lambda: not pid_alive(mark), 10, "mark's server to die")
    hub.start()
    assert hub.get("/user/lena/api/status").status_code == 200
    assert hub.user_model("lena")["servers"][""]["ready"]
    assert "" not in hub.user_model("mark")["servers"]
    hub.stop_server("lena")
    wait_for(lambda: not pid_alive(lena), 10, "lena's server to end")


def test_sigterm_stops_hub_proxy_and_servers(tmp_path):
    hub = Hub(tmp_path / "hub", keep_servers=False).start()
    try:
        assert hub.spawn("pia").status_code in (201, 202)
        hub.wait_ready("pia")
        server = job_pid(hub, "pia")
        proxy = int((hub.state_dir / "proxy.pid").read_text())
        up = hub.proc.pid
        password_file = hub.state_dir / "demo-password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert hub.state_dir.stat().st_mode & 0o777 == 0o700
        assert hub.password not in " ".join(Path(f"/proc/{up}/cmdline").read_text().split("\0"))
    finally:
        hub.stop()
    for pid in (server, proxy, up):
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"process {pid} to end")
    # what hpcgate holds (backends, tunnels, SSH pool) is closed after JupyterHub's cleanup
    log = hub.log_tail(200_000)
    assert "Closed hpcgate's backends, tunnels and SSH connections" in log, log[-3000:]
    assert log.index("Cleaning up single-user servers") < log.index("Closed hpcgate's backends")
