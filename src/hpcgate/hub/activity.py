"""A lab's activity report tells a start waiting for it that the lab runs.

A starting server's forward is probed through its tunnel until the lab answers
(:meth:`hpcgate.remote.tunnels.SystemTunnel.add_forward`), every ``probe_interval``
seconds. The lab's first request to the hub once its Jupyter server runs is its activity
report (``POST /hub/api/users/<name>/activity``): :class:`LabActivityAPIHandler` is
JupyterHub's own handler, and after it has recorded the activity it tells that user's
spawners (:meth:`HPCSpawner.lab_active`), so the probe tries at once instead of at its
next interval. Nothing else changes: the same scopes, body and answer as JupyterHub's.

JupyterHub registers ``extra_handlers`` after its own routes, so this handler is put
before them by :class:`hpcgate.hub.app.HubApp` (:func:`handlers`); under plain
``jupyterhub`` the probe keeps its interval.
"""

from __future__ import annotations

import inspect

from jupyterhub.apihandlers.users import ActivityAPIHandler


class LabActivityAPIHandler(ActivityAPIHandler):
    """JupyterHub's activity API, then a word to the user's starting spawners."""

    async def post(self, user_name: str) -> None:
        answer = super().post(user_name)
        if inspect.isawaitable(answer):  # a plain method in JupyterHub 6, a coroutine elsewhere
            await answer
        user = self.find_user(user_name)
        if user is None:
            return
        for name in list(user.orm_spawners):
            spawner = user.spawners[name]
            if spawner.pending == "spawn" and hasattr(spawner, "lab_active"):
                spawner.lab_active()


def handlers() -> list[tuple]:
    """The route to put before JupyterHub's own (unprefixed, as JupyterHub's lists)."""
    return [(r"/api/users/([^/]+)/activity", LabActivityAPIHandler)]
