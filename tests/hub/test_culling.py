"""Idle culling with the catalog's per-partition limits, by a real jupyterhub-idle-culler.

``hpcgate up`` starts the culler as a hub-managed service with hpcgate's arbiter. The
test hub runs it every 2 s and labs report activity every 2 s; the partitions' limits
are seconds long. What counts as activity is checked end to end: requests proxied to
an app keep a server alive, the Running-apps panel's polling of the lab's API does not.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from harness.hub import Hub, wait_for
from harness.ops import local_catalog, run_hub
from hpcgate.catalog import CatalogError, parse_catalog
from hpcgate.hub.culling import limits_state, stop_sentence

#: seconds: the idle timeout of partition quick and the maximum age of partition aged
IDLE, MAX_AGE = 15, 18
CATALOG = local_catalog({"quick": {"idle_timeout": IDLE / 60}, "aged": {"max_age": MAX_AGE / 60}, "open": {}})
EXTRA = """
c.HPCGate.cull_every = 2
c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "2"}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    yield from run_hub(tmp_path_factory.mktemp("hub"), catalog, EXTRA)


def running(hub: Hub, user: str) -> bool:
    server = hub.user_model(user)["servers"].get("")
    return bool(server and server.get("ready"))


def gone(hub: Hub, user: str) -> bool:
    """The user's server is stopped (not merely stopping)."""
    return "" not in hub.user_model(user)["servers"]


def stop_reason(hub: Hub, user: str) -> str:
    model = hub.get(f"/hub/api/users/{user}?include_stopped_servers=1").json()
    return model["servers"].get("", {}).get("state", {}).get("stop_reason", "")


class Traffic(threading.Thread):
    """Requests ``path`` every second until stopped."""

    def __init__(self, hub: Hub, path: str):
        super().__init__(daemon=True)
        self.hub, self.path, self.stop_event, self.answers = hub, path, threading.Event(), []

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.answers.append(self.hub.get(self.path, timeout=10).status_code)
            except OSError:
                self.answers.append(0)


def test_culler_honours_each_partitions_limits_and_says_why(hub):
    def launch(user: str, partition: str, path: str | None) -> Traffic | None:
        assert hub.spawn(user, {"system": "local", "partition": partition}).status_code in (201, 202)
        hub.wait_ready(user)
        if path is None:
            return None
        traffic = Traffic(hub, path)
        traffic.start()
        return traffic

    began = time.monotonic()
    # abe works in an app all along (requests proxied to it)
    app = launch("abe", "quick", "/user/abe/listing/")
    # max is busy too, but MAX_AGE is the maximum age of its partition
    aged = launch("max", "aged", "/user/max/listing/")
    # ivy's lab only has the Running-apps panel polling the lab's API
    panel = launch("ivy", "quick", "/user/ivy/hpcgate/api/apps")
    # ned's partition has no limits
    launch("ned", "open", None)
    try:
        wait_for(lambda: gone(hub, "ivy"), 90, "ivy's idle server to be culled")
        assert 200 in panel.answers, panel.answers
        assert f"idle for {IDLE} seconds" in stop_reason(hub, "ivy"), stop_reason(hub, "ivy")
        # ivy reads it on the hub's home page
        home = hub.login("ivy").get(hub.url + "/hub/home").text
        assert "hpcgate-stop-reason" in home and f"idle for {IDLE} seconds" in home, home[-3000:]
        wait_for(lambda: gone(hub, "max"), 90, "max's server to reach its maximum age")
        assert f"maximum age of {MAX_AGE} seconds" in stop_reason(hub, "max"), stop_reason(hub, "max")
        # more than twice the idle timeout after abe started working, abe's server still runs
        while time.monotonic() - began < 2 * IDLE + 7:
            time.sleep(1)
        assert running(hub, "abe"), "app traffic should keep abe's server alive"
        assert 200 in app.answers and set(app.answers) <= {200, 502, 503}, app.answers
    finally:
        for t in (panel, app, aged):
            t.stop_event.set()
    # abe stops working: culled for idleness
    wait_for(lambda: gone(hub, "abe"), 90, "abe's server to be culled once idle")
    assert f"idle for {IDLE} seconds" in stop_reason(hub, "abe")
    assert running(hub, "ned")
    assert stop_reason(hub, "ned") == ""


def test_a_new_start_clears_the_stop_reason(hub):
    wait_for(lambda: stop_reason(hub, "ivy"), 5, "ivy's stop reason")
    assert hub.spawn("ivy", {"system": "local", "partition": "open"}).status_code in (201, 202)
    hub.wait_ready("ivy")
    assert stop_reason(hub, "ivy") == ""
    hub.stop_server("ivy")


def test_max_age_longer_than_the_runtime_is_refused_with_a_sentence():
    text = local_catalog({"aged": {"max_age": 90, "limits": {"runtime": {"min": 1, "default": 30, "max": 60}}}})
    with pytest.raises(CatalogError) as err:
        parse_catalog(text)
    assert "max_age (90 min) is longer than the longest runtime of the partition (60 min)" in str(err.value)


def test_limits_are_kept_in_seconds_and_max_age_within_the_jobs_runtime():
    assert limits_state(30, 480, runtime_min=600) == {"idle_timeout": 1800, "max_age": 28800}
    # the job asked for less than max_age: its walltime ends it, not the culler
    assert limits_state(None, 480, runtime_min=60) == {}
    assert "idle for 30 minutes" in stop_sentence("idle", {"idle_timeout": 1800})
    assert "maximum age of 8 hours" in stop_sentence("max_age", {"max_age": 28800})


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_the_culler_ends_with_a_killed_hub(tmp_path):
    # JupyterHub stops its services only on a clean shutdown; a culler left behind by a
    # killed hub would poll a dead hub for ever (and a restarted hub starts another)
    hub = Hub(tmp_path / "hub").start()
    try:
        (app,) = [p for p in children(hub.proc.pid) if "hpcgate.launch" in cmdline(p)]
        culler = wait_for(
            lambda: next((p for p in children(app) if "jupyterhub_idle_culler" in cmdline(p)), None),
            60, "the hub's idle culler",
        )
        proxy = int((hub.state_dir / "proxy.pid").read_text())
        os.kill(app, signal.SIGKILL)
        wait_for(lambda: "jupyterhub_idle_culler" not in cmdline(culler), 30, "the culler to end with the hub")
        # JupyterHub leaves its proxy running for a restarted hub to take over
        assert "configurable-http-proxy" in cmdline(proxy)
    finally:
        hub.stop()
    # ... and the harness ends what the test run started
    assert "configurable-http-proxy" not in cmdline(proxy)
