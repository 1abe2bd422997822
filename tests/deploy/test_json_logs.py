"""JSON log lines from a real hub and lab: parsed, with the fields an admin searches by.

The hub runs with ``--log-format json`` on PostgreSQL, its URL (with a password) read
from a private file (``--db-url-file``).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest

from harness.hub import Hub, wait_for
from hpcgate.files import write_atomic
from tests.pgtools import new_database

CATALOG = textwrap.dedent(
    f"""
    systems:
      local:
        kind: local
        workdir: "{{state_dir}}/users/{{account}}"
        partitions:
          interactive: {{}}
      broken:
        kind: local
        singleuser_command: ["{sys.executable}", "-c", "import sys; print('no lab here'); sys.exit(3)"]
        partitions:
          p: {{}}
    groups:
      everyone:
        all_users: true
        grants: [{{system: local}}, {{system: broken}}]
    defaults:
      system: local
    """
)


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.fixture(scope="module")
def hub(tmp_path_factory, postgres):
    base = tmp_path_factory.mktemp("jsonlogs")
    catalog = base / "catalog.yaml"
    catalog.write_text(CATALOG)
    url_file = base / "db-url"
    write_atomic(url_file, new_database(postgres) + "\n")
    hub = Hub(base / "hub", catalog=str(catalog), args=["--log-format", "json", "--db-url-file", str(url_file)])
    hub.url_file = url_file
    hub.start()
    yield hub
    hub.stop()


def test_hub_lines_are_json_with_server_fields(hub):
    assert hub.spawn("alice", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("alice")
    job_id = hub.user_model("alice")["servers"][""]["state"]["job"]["job_id"]
    text = hub.log_tail(400_000)
    # nothing the hub's Python logs is in the text format ([I 2026-... ]); the proxy (node) is
    assert not re.search(r"^\[[DIWEC] \d{4}-\d\d-\d\d", text, re.M), text[-2000:]
    lines = json_lines(text)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    alice = [line for line in lines if line.get("user") == "alice"]
    phases = [line["phase"] for line in alice if "phase" in line]
    assert phases[:2] == ["submit", "submitted"], phases
    assert "lab-start" in phases
    submitted = next(line for line in alice if line.get("phase") == "submitted")
    assert submitted["system"] == "local" and submitted["server"] == "" and submitted["job_id"] == job_id
    assert submitted["message"] == f"alice: Submitted: job {job_id}"
    # the database URL (a secret) is in no command line and no log
    url = hub.url_file.read_text().strip()
    password = url.split(":")[2].split("@")[0]
    assert password not in text
    assert password not in open(f"/proc/{hub.proc.pid}/cmdline").read()


def test_lab_lines_are_json_with_the_servers_fields(hub):
    job_id = hub.user_model("alice")["servers"][""]["state"]["job"]["job_id"]
    assert hub.get("/user/alice/api/status").status_code == 200
    lab_log = hub.state_dir / "logs" / "alice" / "default.log"

    def lab_lines():
        return [line for line in json_lines(lab_log.read_text()) if line.get("user") == "alice"]

    lines = wait_for(lab_lines, 30, "JSON lines in alice's lab log")
    assert all(line["phase"] == "lab" and line["job_id"] == job_id and line["system"] == "local" for line in lines)
    # hpcgate's lab extension loaded and says so in JSON; nothing in the lab went wrong
    assert any(line["logger"] == "HPCGateLab" and "app(s)" in line["message"] for line in lines), lines[:5]
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    assert any(line["logger"] == "hpcgate-singleuser" and "reported" in line["message"] for line in lines)
    assert any(line["logger"] == "ServerApp" for line in lines)
    hub.stop_server("alice")


def test_a_failed_spawn_logs_one_line_with_the_users_reason(hub):
    r, events = hub.spawn_with_progress("ivan", {"system": "broken"})
    assert r.status_code == 500
    shown = events[-1]["message"]  # what the progress page shows
    failed = wait_for(
        lambda: [e for e in json_lines(hub.log_tail(400_000)) if e.get("user") == "ivan" and e.get("phase") == "failed"],
        10,
        "the failed-spawn line",
    )
    assert len(failed) == 1, failed
    line = failed[0]
    assert line["level"] == "ERROR" and line["system"] == "broken" and line["server"] == ""
    assert line["job_id"]
    assert "ended before it reported its address (exit code 3)" in line["reason"]
    assert line["reason"] in shown, (shown, line["reason"])


def test_a_refused_launch_logs_the_sentence_the_user_read(hub):
    r = hub.spawn("henry", {"system": "local", "cpus": 99})
    assert r.status_code == 400
    sentence = r.json()["message"]
    failed = wait_for(
        lambda: [e for e in json_lines(hub.log_tail(400_000)) if e.get("user") == "henry" and e.get("phase") == "failed"],
        10,
        "henry's failed-spawn line",
    )
    assert [line["reason"] for line in failed] == [sentence]
