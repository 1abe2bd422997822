"""JSON log lines an admin can search: one object per line, for the hub and the labs.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; lines
about a user's server add ``user``, ``server`` (``""`` for the default server),
``system``, ``job_id`` and ``phase`` where known, and a failed spawn adds ``reason``:
the sentence the user was shown. ``exception`` holds a traceback if there is one.

- The hub: :func:`hub_logging_config` is a ``JupyterHub.logging_config`` (``hpcgate up
  --log-format json`` sets it). :class:`HubContext` fills the server fields of
  hpcgate's own lines from the spawner they are about.
- Failed spawns: :func:`watch_start` (called by the spawner when a start begins) logs
  exactly one ERROR line, ``phase: "failed"``, when that start fails.
- The labs: :func:`lab_environment` is what the hub adds to each server's environment
  (``HPCGATE_LOG_FORMAT=json``); ``hpcgate-singleuser`` then prints its own lines with
  :func:`lab_line` and puts :func:`json_config_dir` first on ``JUPYTER_CONFIG_PATH``,
  whose config sets :func:`lab_logging_config` for every Jupyter application of the
  lab. The fields come from the job's environment (:func:`lab_fields`).

Nothing here raises into the code that logs: a field that cannot be found is left out.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from . import protocol

#: The record attribute holding a line's structured fields (``extra={"hpcgate": {...}}``).
FIELDS_ATTR = "hpcgate"
#: The order of the structured fields in a line.
FIELDS = ("user", "server", "system", "job_id", "phase", "reason")
#: Environment variable that switches a lab's log to JSON (value ``json``).
FORMAT_ENV = protocol.LOG_FORMAT
#: Environment variable naming the server's system for the lab's log lines.
SYSTEM_ENV = protocol.SYSTEM

_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep

#: phase of a progress line (HPCSpawner._emit), by the start of its message
_PROGRESS_PHASES = (
    ("Connecting to", "connect"),
    ("Submitting", "submit"),
    ("Submitted", "submitted"),
    ("Queued", "queued"),
    ("Status unknown", "queued"),
    ("Running", "running"),
    ("Server started", "address"),
    ("Tunnel up", "tunnel"),
    ("Waiting for JupyterLab", "lab-start"),
)
#: phase of other spawner lines, by the function that logged them
_FUNCTION_PHASES = {
    "load_state": "restore",
    "_restore_tunnel": "tunnel",
    "_resume": "resume",
    "_end_start": "cancel",
    "_cancel_job": "cancel",
    "stop": "stop",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per record; the structured fields from :data:`FIELDS_ATTR`.

    Accepts (and ignores) the ``fmt``/``datefmt``/``style`` arguments that
    ``logging.config.dictConfig`` passes to every formatter class.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None) or {}
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def spawner_fields(spawner: Any, **more: Any) -> dict[str, Any]:
    """The structured fields of ``spawner`` (user, server, system, job id) plus ``more``."""
    fields: dict[str, Any] = {}
    user = getattr(spawner, "user", None)
    fields["user"] = getattr(user, "name", None)
    fields["server"] = getattr(spawner, "name", None)
    system = getattr(spawner, "system", None)
    if system is None:
        options = getattr(spawner, "user_options", None) or {}
        system = options.get("system") if isinstance(options, dict) else None
    fields["system"] = system
    job = getattr(spawner, "job", None)
    fields["job_id"] = getattr(job, "job_id", None)
    fields.update(more)
    return fields


def _find_spawner(log_name: str) -> Any | None:
    """The live spawner JupyterHub logs as ``user`` or ``user:server`` (or None)."""
    try:
        from jupyterhub.app import JupyterHub

        if not JupyterHub.initialized():
            return None
        users = JupyterHub.instance().users
    except Exception:
        return None
    user_name, _, server = log_name.partition(":")
    # dict's own methods: UserDict/_SpawnerDict look names up in the database on a miss
    for user in dict.values(users):
        if getattr(user, "name", None) == user_name:
            return dict.get(getattr(user, "spawners", {}), server)
    return None


class HubContext(logging.Filter):
    """Adds the server fields to hpcgate's own hub lines about a user's server.

    A line logged by hpcgate's spawner module whose arguments include a spawner's log name
    (``user`` or ``user:server``) gets that spawner's user, server, system and job id;
    its phase comes from the progress message or the function that logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FIELDS_ATTR, None) or record.module != "spawner" or not record.pathname.startswith(_PACKAGE_DIR):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, str) and arg and " " not in arg:
                spawner = _find_spawner(arg)
                if spawner is not None:
                    setattr(record, FIELDS_ATTR, spawner_fields(spawner, phase=_phase(record)))
                    break
        return True


def _phase(record: logging.LogRecord) -> str | None:
    if record.funcName == "_emit" and isinstance(record.args, tuple) and len(record.args) > 1:
        message = str(record.args[1])
        return next((phase for prefix, phase in _PROGRESS_PHASES if message.startswith(prefix)), "progress")
    return _FUNCTION_PHASES.get(record.funcName)


def hub_logging_config() -> dict[str, Any]:
    """``JupyterHub.logging_config`` for JSON lines on the console handler (stderr)."""
    return {
        "formatters": {"console": {"class": f"{__name__}.JSONFormatter"}},
        "filters": {"hpcgate-context": {"()": f"{__name__}.HubContext"}},
        "handlers": {"console": {"filters": ["hpcgate-context"]}},
    }


def lab_environment() -> dict[str, Any]:
    """What the hub adds to ``Spawner.environment`` so that labs log JSON lines too."""
    return {FORMAT_ENV: "json", SYSTEM_ENV: _requested_system}


def _requested_system(spawner: Any) -> str:
    """The system of the launch under way (called by JupyterHub's ``get_env``)."""
    # set by HPCSpawner.validated_request, which start() awaits before get_env
    return getattr(spawner, "validated_system", "") or ""


# --- failed spawns ------------------------------------------------------------------------


def user_message(exc: BaseException) -> str:
    """The sentence JupyterHub shows the user for a failed start."""
    return getattr(exc, "jupyterhub_message", None) or getattr(exc, "log_message", None) or str(exc) or type(exc).__name__


def watch_start(spawner: Any, task: asyncio.Task | None, log: logging.Logger | None = None) -> None:
    """Log one line when the start running as ``task`` fails.

    ERROR, ``phase: "failed"``, ``reason``: the message the user was shown. A start
    cancelled after ``start_timeout`` counts as failed (JupyterHub gave up); one
    cancelled earlier (the user's cancel, the hub stopping) is logged at INFO as
    ``phase: "cancelled"``.
    """
    if task is None:
        return
    log = log or spawner.log
    began = time.monotonic()

    def done(task: asyncio.Task) -> None:
        fields = spawner_fields(spawner)
        if task.cancelled():
            timeout = getattr(spawner, "start_timeout", 0) or 0
            if timeout and time.monotonic() - began >= timeout:
                reason = f"The server did not start within {timeout} s."
                fields.update(phase="failed", reason=reason)
                log.error("Spawn of %s failed: %s", spawner._log_name, reason, extra={FIELDS_ATTR: fields})
            else:
                fields.update(phase="cancelled")
                log.info("Start of %s was cancelled", spawner._log_name, extra={FIELDS_ATTR: fields})
            return
        exc = task.exception()
        if exc is None:
            return
        reason = user_message(exc)
        fields.update(phase="failed", reason=reason)
        log.error("Spawn of %s failed: %s", spawner._log_name, reason, extra={FIELDS_ATTR: fields})

    task.add_done_callback(done)


# --- the lab --------------------------------------------------------------------------------


def lab_fields(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The lab's fields from its job's environment.

    ``job_id``: ``SLURM_JOB_ID`` in a Slurm job, else the session id (the PID the
    local backend records as the job id).
    """
    environ = os.environ if environ is None else environ
    return {
        "user": environ.get("JUPYTERHUB_USER"),
        "server": environ.get("JUPYTERHUB_SERVER_NAME"),
        "system": environ.get(SYSTEM_ENV) or None,
        "job_id": environ.get("SLURM_JOB_ID") or str(os.getsid(0)),
        "phase": "lab",
    }


def lab_logging_config() -> dict[str, Any]:
    """``Application.logging_config`` for every Jupyter application of a lab: JSON lines
    with the lab's fields (shipped as ``hpcgate/data/json-logs/jupyter_server_config.py``)."""
    return {
        "formatters": {"console": {"class": f"{__name__}.JSONFormatter"}},
        "filters": {"hpcgate-lab": {"()": f"{__name__}.LabFields", "fields": lab_fields()}},
        "handlers": {"console": {"filters": ["hpcgate-lab"]}},
    }


def json_config_dir() -> str:
    """The directory holding that config file."""
    return str(Path(__file__).resolve().parent / "data" / "json-logs")


def lab_line(logger: str, message: str, level: int = logging.INFO) -> str:
    """One JSON line with the lab's fields, for code that prints rather than logs."""
    record = logging.LogRecord(logger, level, __file__, 0, message, None, None)
    setattr(record, FIELDS_ATTR, lab_fields())
    return JSONFormatter().format(record)


class LabFields(logging.Filter):
    """Adds the lab's fields to every line that has none."""

    def __init__(self, fields: dict[str, Any]):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, FIELDS_ATTR, None):
            setattr(record, FIELDS_ATTR, self.fields)
        return True
