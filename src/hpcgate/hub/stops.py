"""Who asked JupyterHub to stop a server: the home page's "cancelled by an admin".

JupyterHub's server API (``DELETE /hub/api/users/<name>/server`` and
``.../servers/<server>``, which the admin page uses too) does not tell the spawner who
asked. :class:`ServerStopAPIHandler` is JupyterHub's own handler with one step before
it: the requester is kept in :data:`STOP_REQUESTER` (a context variable) while
JupyterHub stops the server. JupyterHub runs the stop in a task created inside the
request, which carries a copy of that context, so :meth:`HPCSpawner.stop` reads who
asked and, when a user other than the owner stopped it (an admin: only admins hold
``delete:servers`` on other users' servers), keeps :func:`admin_stop_sentence` for the
home page. A service (the idle culler) gives its own reason through the hub API
(``hpcgate.hub.culling``); the owner's own stop needs no sentence.

JupyterHub registers ``extra_handlers`` after its own routes, so this handler cannot be
one of them: :class:`hpcgate.hub.app.HubApp` puts :func:`handlers` before JupyterHub's.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import NamedTuple

from jupyterhub.apihandlers.users import UserServerAPIHandler


class Requester(NamedTuple):
    """Who asked for a stop: ``kind`` is JupyterHub's ``user`` or ``service``."""

    kind: str
    name: str


#: the requester of the stop under way in this request (unset outside such requests)
STOP_REQUESTER: ContextVar[Requester | None] = ContextVar("hpcgate_stop_requester", default=None)


def admin_stop_sentence(when: float | None = None) -> str:
    """What the home page says about a server an admin stopped (never the admin's name)."""
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    return f"Your server was cancelled by an admin at {at}. Start it again when you need it."


def stopped_by_someone_else(owner: str) -> bool:
    """True inside a stop a user other than ``owner`` asked for (see the module doc)."""
    who = STOP_REQUESTER.get()
    return who is not None and who.kind == "user" and who.name != owner


class ServerStopAPIHandler(UserServerAPIHandler):
    """JupyterHub's server API, keeping who asked for a DELETE (see the module doc)."""

    async def delete(self, user_name: str, server_name: str = "") -> None:
        current = self.current_user
        kind = getattr(current, "kind", "user")
        token = STOP_REQUESTER.set(Requester(kind, getattr(current, "name", "")) if current is not None else None)
        try:
            await super().delete(user_name, server_name)
        finally:
            STOP_REQUESTER.reset(token)


def handlers() -> list[tuple]:
    """The routes to put before JupyterHub's own (unprefixed, as JupyterHub's lists)."""
    return [
        (r"/api/users/([^/]+)/server", ServerStopAPIHandler),
        (r"/api/users/([^/]+)/servers/([^/]*)", ServerStopAPIHandler),
    ]
