"""A user's sessions (JupyterHub named servers) as the home page and the lab see them.

A *session* is one of the user's servers, default or named, with the options it was
launched with (JupyterHub keeps them in ``orm_spawner.user_options``; a start without
options reuses them, which is what "relaunch" is). This module answers, for the hub API
handlers and the spawner:

- :func:`session_card` -- everything a session card shows: system, partition, project,
  resources, core-hours, state (queued with the scheduler's reason and expected start,
  starting, running on a node, stopping, stopped and why), job id, the end of its wall
  time;
- :func:`active_systems` -- the systems of a user's other active sessions (the catalog's
  session limits count them);
- :func:`last_choices` -- the user's last launch options per system (the form opens
  with them).

It reads spawners and the shared :class:`StatusCache`; it never queries a scheduler
itself and changes nothing.
"""

from __future__ import annotations

import calendar
import datetime
import time
from typing import Any

from ..catalog import BASE_KEYS, OPTION_KEYS, core_hours
from .backends.base import JobState, JobStatus

#: Session states a card shows (``state`` of :func:`session_card`).
STATES = ("queued", "starting", "running", "stopping", "stopped", "unknown")


def _epoch(when: datetime.datetime | None) -> float | None:
    """A naive-UTC datetime of JupyterHub's database as epoch seconds."""
    if when is None:
        return None
    if when.tzinfo is not None:
        return when.timestamp()
    return float(calendar.timegm(when.timetuple())) + when.microsecond / 1e6


def options_of(spawner: Any) -> dict[str, Any]:
    """The launch options a spawner keeps (those of its last start, or set by an edit)."""
    options = getattr(spawner, "user_options", None) or getattr(spawner.orm_spawner, "user_options", None) or {}
    return {k: options[k] for k in OPTION_KEYS if k in options}


def active_systems(user: Any, exclude: str | None = None) -> list[str]:
    """Systems of ``user``'s active (starting, running, stopping) sessions but ``exclude``.

    A start that has not passed the session-limit check yet (``admitted`` False, see
    ``HPCSpawner.start``) does not count: of two starts at once, the first to pass the
    check counts for the second, never both for each other.
    """
    found = []
    for name in list(user.orm_spawners):
        if name == exclude:
            continue
        spawner = user.spawners[name]
        if not spawner.active:
            continue
        if spawner.pending == "spawn" and not getattr(spawner, "admitted", True):
            continue
        system = getattr(spawner, "system", None) or options_of(spawner).get("system") or ""
        found.append(str(system))
    return found


def last_choices(user: Any) -> dict[str, dict[str, Any]]:
    """The options of the user's most recent launch on each system, by system name.

    Only options a launch kept (complete, see ``HPCSpawner._keep_options``) count.
    Sessions are ordered by their last start or activity; the newest per system wins.
    """
    dated = []
    for name, orm_spawner in list(user.orm_spawners.items()):
        options = options_of(user.spawners[name])
        if not isinstance(options.get("system"), str) or not all(k in options for k in BASE_KEYS):
            continue  # never launched: a start refused before its options were kept complete
        when = orm_spawner.started or orm_spawner.last_activity
        dated.append((_epoch(when) or 0.0, options))
    dated.sort(key=lambda item: item[0])
    return {options["system"]: options for _, options in dated}


def _failure(spawner: Any) -> str:
    """Why the last start failed, if it did (JupyterHub keeps the start's future)."""
    future = getattr(spawner, "_spawn_future", None)
    if future is None or not future.done() or future.cancelled():
        return ""
    exc = future.exception()
    if exc is None:
        return ""
    message = getattr(exc, "jupyterhub_message", None) or getattr(exc, "log_message", None) or str(exc)
    return f"The last start failed: {message}"


async def session_card(spawner: Any, status: JobStatus | None) -> dict[str, Any]:
    """What the home page shows about one session (JSON-able).

    ``status``: the job's status from the system's StatusCache (None when the session
    has no job). Times are epoch seconds; ``now`` is the hub's clock, so that a browser
    with a wrong clock still counts down correctly.
    """
    user = spawner.user
    options = options_of(spawner)
    orm = spawner.orm_spawner
    job = getattr(spawner, "job", None)
    system = getattr(spawner, "system", None) or options.get("system")
    card: dict[str, Any] = {
        "name": spawner.name,
        "display_name": orm.display_name or spawner.name or "default",
        "url": user.server_url(spawner.name),
        "options": options,
        "system": system,
        "system_description": "",
        "partition": options.get("partition"),
        "project": options.get("project"),
        "reservation": options.get("reservation"),
        "resources": {k: options[k] for k in ("nodes", "cpus", "memory", "gpus", "runtime") if k in options},
        "core_hours": None,
        "job_id": job.job_id if job else None,
        "node": None,
        "reason": "",
        "expected_start": None,
        "started": _epoch(orm.started),
        "end_time": None,
        "last_activity": _epoch(orm.last_activity),
        "stop_reason": "",
        "now": time.time(),
    }
    res = card["resources"]
    if all(isinstance(res.get(k), int) for k in ("nodes", "cpus", "runtime")):
        card["core_hours"] = round(core_hours(res["nodes"], res["cpus"], res["runtime"]), 2)
    if system:
        try:
            card["system_description"] = spawner.hpcgate.system(system).description
        except (KeyError, AttributeError):
            pass
    if status is not None:
        card["node"] = status.node
        card["reason"] = status.reason
    if spawner.pending == "stop":
        card["state"] = "stopping"
    elif spawner.pending:
        if status is not None and status.state is JobState.PENDING:
            card["state"] = "queued"
            card["expected_start"] = status.start_time
        else:
            card["state"] = "starting"
    elif spawner.ready:
        card["state"] = "unknown" if status is not None and status.state is JobState.UNKNOWN else "running"
    else:
        card["state"] = "stopped"
        card["job_id"] = None
        card["stop_reason"] = getattr(spawner, "stop_reason", "") or _failure(spawner)
    if card["state"] in ("running", "unknown", "stopping"):
        card["end_time"] = end_time(spawner, status)
    if card["node"] is None and card["state"] in ("running", "starting") and job is not None:
        card["node"] = job.host or "this machine"
    # energy and CO2 of the running or last session (hpcgate.energy; None before one ran)
    energy = getattr(spawner, "energy", None)
    card["energy"] = await energy() if callable(energy) else None
    return card


def end_time(spawner: Any, status: JobStatus | None) -> float | None:
    """When a running session's wall time runs out (epoch seconds).

    The scheduler's planned end where it says one (Slurm's EndTime); otherwise the
    start plus the runtime asked for, which the hub enforces itself
    (:meth:`HPCSpawner.poll`).
    """
    if status is not None and status.end_time:
        return status.end_time
    started = _epoch(spawner.orm_spawner.started)
    runtime = options_of(spawner).get("runtime")
    if started is None or not isinstance(runtime, int):
        return None
    return started + runtime * 60
