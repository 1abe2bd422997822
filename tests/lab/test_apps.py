"""App specs, lifecycle, REST API, activity tracking and isolation, against the real server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness.missing import not_installed


def api(lab, method, path=""):
    return lab.s.request(method, lab.url("hpcgate/api/apps" + path))


def wait_for(pred, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached")


def info(lab, name):
    return api(lab, "GET", f"/{name}").json()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return stat[2] != "Z"


def test_list_reports_every_app_with_fields(lab):
    apps = {a["name"]: a for a in api(lab, "GET").json()["apps"]}
    assert {"echoapp", "jspcallable", "epplugin", "ownplugin", "isolated"} <= set(apps)
    for a in apps.values():
        assert a["state"] in ("stopped", "starting", "running", "failed")
        assert {"pid", "uptime", "last_activity", "url"} <= set(a)
    assert apps["epplugin"]["launcher_entry"]["title"] == "EP Plugin"
    assert apps["jspcallable"]["new_browser_tab"] is False
    assert apps["echoapp"]["url"] == "/user/alice/echoapp/"


def test_api_needs_authentication(lab):
    import requests

    assert requests.get(lab.url("hpcgate/api/apps")).status_code == 403
    assert requests.post(lab.url("hpcgate/api/apps/echoapp")).status_code == 403


def test_start_on_first_request_then_stop_and_restart(lab):
    r = lab.s.get(lab.url("echoapp/first?x=1"))
    assert r.status_code == 200 and r.json()["uri"] == "/first?x=1"
    a = info(lab, "echoapp")
    assert a["state"] == "running" and a["pid"] == r.json()["pid"] and a["uptime"] >= 0
    pid = a["pid"]
    r = api(lab, "POST", "/echoapp/restart")
    assert r.status_code == 200 and r.json()["pid"] != pid
    assert not alive(pid)
    r = api(lab, "DELETE", "/echoapp")
    assert r.json()["state"] == "stopped" and r.json()["pid"] is None
    r = api(lab, "POST", "/echoapp")
    assert r.json()["state"] == "running"
    assert "starting echoapp" in api(lab, "GET", "/echoapp/log").text


def test_callable_specs_and_entry_points(lab):
    """jupyter-server-proxy plugins work unchanged: callables get only what they name."""
    for name in ("jspcallable", "epplugin", "ownplugin"):
        r = lab.s.get(lab.url(f"{name}/p"))
        assert r.status_code == 200, (name, r.text)
        assert r.json()["uri"] == "/p"


def test_absolute_url_app_gets_full_path(lab):
    assert lab.s.get(lab.url("absapp/x")).json()["uri"] == "/user/alice/absapp/x"


def test_mappath_and_header_override(lab):
    assert lab.s.get(lab.url("mapped/")).json()["uri"] == "/mapped-root"
    headers = dict(lab.s.get(lab.url("headers/")).json()["headers"])
    port = int(headers["X-App-Port"])
    assert port > 0


def test_rewrite_response(lab):
    r = lab.s.get(lab.url("rewritten/some/path"))
    assert r.headers["X-Rewritten"] == "/some/path"
    assert '"method": "TEG"' in r.text


def test_readiness_waits_for_expected_status(lab):
    r = lab.s.get(lab.url("slowready/health"))
    assert r.status_code == 200  # the first request waited until /health said 200


def test_failed_start_reports_reason_and_log(lab):
    r = api(lab, "POST", "/failstart")
    assert r.status_code == 503
    assert "exited with code 7" in r.json()["message"]
    assert info(lab, "failstart")["state"] == "failed"
    assert "boom on stderr" in api(lab, "GET", "/failstart/log").text
    assert lab.s.get(lab.url("failstart/")).status_code == 503


def test_restart_after_crash_then_give_up(lab):
    first = api(lab, "POST", "/crashy").json()["pid"]
    second = wait_for(lambda: (a := info(lab, "crashy"))["state"] == "running" and a["pid"] != first and a["pid"])
    assert second != first
    final = wait_for(lambda: (a := info(lab, "crashy"))["state"] == "failed" and a, timeout=40)
    assert final["restarts"] == 2 and "gave up" in final["error"]


def test_restart_policy_always_and_never(lab):
    first = api(lab, "POST", "/cleanexit").json()["pid"]
    wait_for(lambda: info(lab, "cleanexit")["pid"] not in (None, first))
    api(lab, "POST", "/noretry")
    final = wait_for(lambda: (a := info(lab, "noretry"))["state"] == "stopped" and a)
    assert final["exit_code"] == 0 and final["restarts"] == 0


def test_stop_kills_whole_group_after_grace(lab):
    pidfile = lab.root / "child.pid"
    r = api(lab, "POST", "/stubborn")
    pid = r.json()["pid"]
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text()))
    assert alive(pid) and alive(child)
    api(lab, "DELETE", "/stubborn")  # ignores SIGTERM: SIGKILL after stop_timeout
    assert not alive(pid) and not alive(child)
    assert "stopping stubborn" in api(lab, "GET", "/stubborn/log").text


def test_idle_app_is_stopped(lab):
    assert lab.s.get(lab.url("idle/")).status_code == 200
    wait_for(lambda: info(lab, "idle")["state"] == "stopped", timeout=20)


def _server_activity(lab):
    return lab.s.get(lab.url("api/status")).json()["last_activity"]


def test_proxy_traffic_counts_as_server_activity(lab, upstream):
    lab.s.get(lab.url("quiet/"))  # started
    time.sleep(1.1)
    before = _server_activity(lab)
    lab.s.get(lab.url("quiet/poll"))  # excluded pattern
    time.sleep(1.1)
    assert _server_activity(lab) == before
    lab.s.get(lab.url("noactivity/x"))
    time.sleep(1.1)
    lab.s.get(lab.url("noactivity/y"))
    assert _server_activity(lab) == before
    lab.s.get(lab.url("quiet/work"))
    after = _server_activity(lab)
    assert after > before
    time.sleep(1.1)
    lab.s.get(lab.url(f"proxy/{upstream}/z"))
    assert _server_activity(lab) > after


def needs_bwrap() -> None:
    if not Path("/usr/bin/bwrap").exists():
        not_installed("bubblewrap is not installed (scripts/install-system-deps.sh installs it)")


def unix_connect(sock_path: Path, as_user: str | None = None) -> subprocess.CompletedProcess:
    """Connect to ``sock_path`` from a new process, as ``as_user`` if given."""
    probe = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(sock_path)!r}); print('connected')"
    runas = ["runuser", "-u", as_user, "--"] if as_user else []
    return subprocess.run([*runas, "/usr/bin/python3", "-c", probe], capture_output=True, text=True)


def test_isolated_app_reachable_only_through_proxy(lab, other_user):
    needs_bwrap()
    r = lab.s.get(lab.url("isolated/inside"))
    assert r.status_code == 200, r.text
    assert r.json()["uri"] == "/inside"
    a = info(lab, "isolated")
    assert a["isolated"] and a["state"] == "running"
    # The app also listens on TCP inside its namespace; the host cannot reach that port.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lab.iso_tcp), timeout=2)
    sock_path = Path(a["unix_socket"])
    # Another Unix user cannot connect to its unix socket.
    other = unix_connect(sock_path, other_user)
    assert other.returncode != 0 and "PermissionError" in other.stderr
    # We can (same user), proving the socket is there.
    assert unix_connect(sock_path).stdout.strip() == "connected"


def test_tcp_only_app_isolated_behind_its_unix_socket(lab, other_user):
    """An app that can only listen on TCP runs in its own network namespace; the lab
    reaches it through the bridge's unix socket, nobody reaches its port."""
    needs_bwrap()
    r = lab.s.get(lab.url("isotcp/through-the-bridge?x=1"))
    assert r.status_code == 200, r.text
    assert r.json()["uri"] == "/through-the-bridge?x=1"
    a = info(lab, "isotcp")
    assert a["isolated"] and a["state"] == "running" and a["port"] is None
    sock_path = Path(a["unix_socket"])
    assert sock_path.is_socket() and sock_path.stat().st_mode & 0o777 == 0o600
    # the port the app listens on exists only inside its namespace
    log = lab.s.get(lab.url("hpcgate/api/apps/isotcp/log")).text
    port = int(re.search(r"'--port', '(\d+)'", log).group(1))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    other = unix_connect(sock_path, other_user)
    assert other.returncode != 0 and "PermissionError" in other.stderr
    assert unix_connect(sock_path).stdout.strip() == "connected"
    # a stop ends app and bridge and removes the socket
    pid = a["pid"]
    assert lab.s.delete(lab.url("hpcgate/api/apps/isotcp")).status_code == 200
    assert not sock_path.exists()
    assert group_members(pid) == []


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found
