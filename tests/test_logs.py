"""hpcgate.logs without a hub: the line format, the lab's fields, the failed-start hook."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

from hpcgate.logs import FIELDS_ATTR, JSONFormatter, LabFields, lab_fields, lab_line, watch_start


def record(message: str, *args, fields: dict | None = None, exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("JupyterHub", logging.ERROR, __file__, 1, message, args, exc_info)
    if fields is not None:
        setattr(rec, FIELDS_ATTR, fields)
    return rec


def test_a_line_is_one_json_object_with_known_fields_only():
    line = JSONFormatter().format(record("a %s\nb", "x", fields={"user": "ana", "job_id": "7", "other": 1}))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "a x\nb" and data["level"] == "ERROR" and data["logger"] == "JupyterHub"
    assert data["user"] == "ana" and data["job_id"] == "7" and "other" not in data and "system" not in data
    assert data["time"].endswith("+00:00")


def test_a_traceback_goes_into_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        data = json.loads(JSONFormatter().format(record("failed", exc_info=sys.exc_info())))
    assert "ValueError: boom" in data["exception"]


def test_lab_fields_from_the_jobs_environment():
    env = {"JUPYTERHUB_USER": "ana", "JUPYTERHUB_SERVER_NAME": "gpu", "HPCGATE_SYSTEM": "jureca", "SLURM_JOB_ID": "42"}
    assert lab_fields(env) == {"user": "ana", "server": "gpu", "system": "jureca", "job_id": "42", "phase": "lab"}
    rec = record("x")
    LabFields(lab_fields(env)).filter(rec)
    assert json.loads(JSONFormatter().format(rec))["system"] == "jureca"


def test_lab_line(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "ana")
    data = json.loads(lab_line("hpcgate-singleuser", "reported"))
    assert data["logger"] == "hpcgate-singleuser" and data["user"] == "ana" and data["phase"] == "lab"


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, rec):
        self.records.append(rec)


def _spawner(log):
    return SimpleNamespace(user=SimpleNamespace(name="ana"), name="", system="jureca", job=SimpleNamespace(job_id="9"),
                           user_options={}, start_timeout=600, _log_name="ana", log=log)


async def test_watch_start_logs_one_line_per_failed_start_and_none_for_success():
    log = logging.getLogger("hpcgate-test-watch")
    log.setLevel(logging.INFO)
    handler = Capture()
    log.addHandler(handler)
    try:
        class Shown(Exception):
            jupyterhub_message = "Job 9 was cancelled. The partition is down."

        async def fail():
            watch_start(spawner, asyncio.current_task())
            raise Shown("internal detail")

        async def succeed():
            watch_start(spawner, asyncio.current_task())
            return "ok"

        spawner = _spawner(log)
        for coro in (fail(), succeed()):
            task = asyncio.ensure_future(coro)
            await asyncio.wait([task])
            await asyncio.sleep(0)
        failed = [getattr(r, FIELDS_ATTR) for r in handler.records]
        assert failed == [{"user": "ana", "server": "", "system": "jureca", "job_id": "9", "phase": "failed",
                           "reason": "Job 9 was cancelled. The partition is down."}]

        async def wait_forever():
            watch_start(spawner, asyncio.current_task())
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(wait_forever())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)
        assert getattr(handler.records[-1], FIELDS_ATTR)["phase"] == "cancelled"
        assert handler.records[-1].levelno == logging.INFO
    finally:
        log.removeHandler(handler)
