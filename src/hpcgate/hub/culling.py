"""Idle culling with per-partition limits, done by jupyterhub-idle-culler.

hpcgate writes no culler of its own. It runs jupyterhub-idle-culler as a hub-managed
service (:func:`enable`, which ``hpcgate up`` calls and a deployment's
``jupyterhub_config.py`` calls too) and gives it a *cull arbiter*
(``IdleCuller.cull_arbiter_hook``, :func:`cull_arbiter`) that decides per server:

- The partition's ``idle_timeout`` and ``max_age`` (catalog, minutes) are copied into
  the server's state at launch (``state["cull"]``, seconds; ``max_age`` never longer
  than the runtime the job asked for). A catalog change applies to servers started
  after it; a running server keeps the limits it was started with.
- The culler reads each server's state (the ``admin:server_state`` scope) and culls a
  server whose age reached its ``max_age`` or whose idle time reached its
  ``idle_timeout``. Servers without limits (no ``cull`` in their state, or a partition
  without them) are never culled. The culler's own global ``--timeout`` and
  ``--max-age`` are not used.
- Before it returns "cull", the arbiter tells the hub why
  (``POST /hub/api/hpcgate/users/<name>/stop-reason``, ``{"server", "reason"}`` with
  ``reason`` ``idle`` or ``max_age``; the culler's token needs ``delete:servers`` on
  that user); the hub writes the sentence the user reads on the home page
  (:func:`stop_sentence`) -- the culler never sends text.

Why not one culler per distinct timeout: the culler's only filter is its token's
scopes, and JupyterHub's scope filters (``!user=``, ``!group=``, ``!server=``) cannot
follow servers as they start and stop on different partitions; a user with two
servers on two partitions would be culled by the wrong one. The arbiter sees the
server itself, so one culler serves every partition.

What counts as activity is what the lab reports to the hub (jupyterhub-singleuser's
activity notes: kernels, terminals, the lab's API, and every request and websocket
frame hpcgate's proxy relays to an app). The Running-apps panel's polling of the lab's
hpcgate API is not activity. JupyterHub's own proxy-based activity (every request
through configurable-http-proxy, including that polling) is switched off
(``JupyterHub.last_activity_interval = 0``) so that it cannot keep idle servers alive.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any

from ..logs import FORMAT_ENV
from ..remote.sshmux import with_parent_death

#: the managed service's name (and its role's)
SERVICE_NAME = "hpcgate-idle-culler"
#: what the culler's token may do: list users and servers, read their state and
#: activity, stop servers (and say why)
SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers", "admin:server_state"]
#: reasons the arbiter may report
REASONS = ("idle", "max_age")


def culler_service(cull_every: int = 60, json_logs: bool = False) -> dict[str, Any]:
    """The ``c.JupyterHub.services`` entry: jupyterhub-idle-culler with hpcgate's arbiter
    (``json_logs``: it logs JSON lines like the hub, hpcgate.logs).

    The culler ends with the hub even when the hub is killed (SIGKILL, a crash):
    JupyterHub stops its managed services only on a clean shutdown, and a hub started
    again starts a new culler, so the old one would poll a dead hub for ever. Through
    ``setpriv --pdeathsig`` (util-linux); where setpriv is missing, the culler is
    started as it is (a service's command cannot carry a preexec function).
    """
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        f"--cull-every={max(int(cull_every), 1)}",
        # not used by the arbiter (per-server limits); 0 would disable nothing here
        "--timeout=31536000",
        f"--config={os.path.join(os.path.dirname(__file__), 'idle_culler_config.py')}",
    ]
    wrapped, _preexec = with_parent_death(command)
    return {
        "environment": {FORMAT_ENV: "json"} if json_logs else {},
        "name": SERVICE_NAME,
        "command": wrapped,
    }


def culler_role() -> dict[str, Any]:
    """The ``c.JupyterHub.load_roles`` entry giving the culler exactly :data:`SCOPES`."""
    return {"name": SERVICE_NAME, "scopes": list(SCOPES), "services": [SERVICE_NAME]}


def enable(c: Any, cull_every: int = 60, json_logs: bool = False) -> None:
    """Add the culler service and its role to JupyterHub config ``c``; switch off
    proxy-based activity (see the module docstring). Call after any config that
    assigns ``c.JupyterHub.services`` or ``load_roles`` (it appends)."""
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    if not any(s.get("name") == SERVICE_NAME for s in services):
        services.append(culler_service(cull_every, json_logs))
        roles.append(culler_role())
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    c.JupyterHub.last_activity_interval = 0


def limits_state(idle_timeout_min: float | None, max_age_min: float | None, runtime_min: int) -> dict[str, float]:
    """What the spawner keeps in ``state["cull"]``: seconds; ``max_age`` within the runtime."""
    limits: dict[str, float] = {}
    if idle_timeout_min:
        limits["idle_timeout"] = round(idle_timeout_min * 60, 3)
    if max_age_min and max_age_min < runtime_min:
        # at the runtime itself the scheduler ends the job (walltime), not the culler
        limits["max_age"] = round(max_age_min * 60, 3)
    return limits


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes >= 120 and minutes % 60 == 0:
        return f"{int(minutes // 60)} hours"
    if minutes >= 1:
        n = round(minutes)
        return f"{n} minute" + ("" if n == 1 else "s")
    return f"{round(seconds)} seconds"


def stop_sentence(reason: str, limits: dict[str, float], when: datetime.datetime | None = None) -> str:
    """The home page's sentence for a server the culler stopped (``reason`` in :data:`REASONS`)."""
    at = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    if reason == "idle":
        idle = _duration(limits.get("idle_timeout", 0))
        return f"Your server was stopped at {at} because it had been idle for {idle}. Start it again when you need it."
    age = _duration(limits.get("max_age", 0))
    return (
        f"Your server was stopped at {at} because it reached its maximum age of {age}. "
        "Start a new one to go on working."
    )


def _parse(value: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def decide(server: dict[str, Any], inactive: datetime.timedelta | None, now: datetime.datetime) -> str | None:
    """Why ``server`` (a JupyterHub server model with ``state``) should be culled, or None."""
    limits = (server.get("state") or {}).get("cull") or {}
    max_age = limits.get("max_age")
    if max_age and server.get("started") and (now - _parse(server["started"])).total_seconds() >= max_age:
        return "max_age"
    idle = limits.get("idle_timeout")
    if idle and inactive is not None and inactive.total_seconds() >= idle:
        return "idle"
    return None


async def cull_arbiter(*, inactive: datetime.timedelta | None, inactive_limit: int, server: dict[str, Any], **kwargs: Any) -> bool:
    """``IdleCuller.cull_arbiter_hook``: cull by the server's own limits, after telling the hub why."""
    reason = decide(server, inactive, datetime.datetime.now(datetime.UTC))
    if reason is None:
        return False
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

    user, _, name = server.get("full_name", "").partition("/")
    url = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + f"/hpcgate/users/{user}/stop-reason"
    request = HTTPRequest(
        url,
        method="POST",
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}", "Content-Type": "application/json"},
        body=json.dumps({"server": name, "reason": reason}),
    )
    try:
        await AsyncHTTPClient().fetch(request)
    except (HTTPClientError, OSError) as exc:
        # the server is culled anyway; the home page then has no sentence for it
        print(f"hpcgate: could not record why {user}/{name} is culled: {exc}", file=sys.stderr)
    return True
