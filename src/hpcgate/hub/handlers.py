"""Hub API routes of hpcgate (``c.JupyterHub.extra_handlers = hpcgate.hub.extra_handlers()``).

- ``GET  /hub/api/hpcgate/offer``: what the calling user may launch (catalog offer),
  each system's and partition's state (``status``) and the ``announcements``.
- ``GET  /hub/api/hpcgate/energy``: energy and CO2 of the calling user's sessions,
  ``{"sessions": {server name: {energy_wh, method, estimate, co2_g, ...} | null}}``
  (``""`` is the default server; see :mod:`hpcgate.energy`).
- ``GET  /hub/api/hpcgate/announcements``: the catalog's announcements (labs show them).
- ``POST /hub/api/hpcgate/ready``: a starting server reports ``{"host", "port"}`` (and
  optionally its ``node``'s name, shown in the progress).
  Only that server's own API token is accepted; the spawner never guesses the port.
  The whole body is checked before any spawner is looked up or told anything.
- ``GET  /hub/api/hpcgate/users/<name>/sessions[/<server>]``: the user's sessions as the
  home page's cards show them (:func:`hpcgate.hub.sessions.session_card`); needs the
  ``read:servers`` scope on that user (the user's own cookie or token, or an admin's).
- ``GET  /hub/hpcgate/static/...``: the home page's script and style.
- ``GET  /hub/api/hpcgate/session``: a running server asks about itself with its own
  API token: system, node, job id and when its wall time ends (the lab's status bar).
- ``POST /hub/api/hpcgate/users/<name>/stop-reason``: the idle culler says why it is
  about to stop a server (``{"server", "reason"}``, reason ``idle`` or ``max_age``);
  needs ``delete:servers`` on that user. The hub writes the sentence the user reads.

These must run inside the hub process (they talk to live spawner objects), which is why
they are extra handlers and not a separate JupyterHub service.
"""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from .. import protocol
from ..catalog import HOST_PATTERN
from .culling import REASONS, stop_sentence
from .health import announcements, offer_status
from .sessions import session_card


async def _card(spawner) -> dict:
    status = None
    job_status = getattr(spawner, "job_status", None)
    if job_status is not None and spawner.active:
        status = await job_status()
    return await session_card(spawner, status)


class OfferHandler(APIHandler):
    """The calling user's offer: systems, partitions with limits, projects."""

    async def get(self) -> None:
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "Log in, or send a token, to see what you may launch.")
        spawner = user.spawner
        gate = spawner.hpcgate
        catalog = gate.catalog()
        # the same conditions as the form: this request's client address, the login's factors
        offer = catalog.offer(
            spawner.user_info(), await spawner.login_context(self), await spawner.charges(),
            await spawner.reservations(),
        )
        health = await gate.health([s.name for s in offer.systems])
        body = offer.as_json()
        body["status"] = offer_status(catalog, offer, health.get)
        body["announcements"] = announcements(catalog)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))


class AnnouncementsHandler(APIHandler):
    """The catalog's current announcements, for any logged-in user or token (labs)."""

    async def get(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Log in, or send a token, to read the announcements.")
        from .runtime import HPCGate

        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"announcements": announcements(HPCGate.for_hub().catalog())}))


class EnergyHandler(APIHandler):
    """Energy and CO2 of each of the calling user's sessions (running or last)."""

    async def get(self) -> None:
        user = self.current_user
        if user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "Log in, or send a user's token, to see your sessions' energy.")
        sessions = {}
        for name in user.orm_spawners:
            spawner = user.spawners[name]
            energy = getattr(spawner, "energy", None)
            sessions[name] = await energy() if callable(energy) else None
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"sessions": sessions}))


class ReadyHandler(APIHandler):
    """A server reports where it listens; authenticated by that server's API token."""

    def check_xsrf_cookie(self) -> None:
        # token-authenticated callback from the job; cookies are refused below anyway
        return None

    async def post(self) -> None:
        token = self.get_auth_token()
        user = self.current_user
        if not token or user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "This endpoint takes a server's own API token.")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "Body must be JSON.") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "Body must be a JSON object.")
        unknown = sorted(set(body) - {"host", "port", "server_name", "node"})
        if unknown:
            raise web.HTTPError(400, f"Unknown key {unknown[0][:40]!r}: send only host, port, server_name and node.")
        host, port, server_name = body.get("host"), body.get("port"), body.get("server_name", "")
        node = body.get("node", "")
        if not isinstance(host, str) or not re.fullmatch(HOST_PATTERN, host):
            raise web.HTTPError(400, "host must be a host name or an IP address.")
        if not isinstance(node, str) or (node and not re.fullmatch(HOST_PATTERN, node)):
            raise web.HTTPError(400, "node must be a host name.")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise web.HTTPError(400, "port must be a number from 1 to 65535.")
        if not isinstance(server_name, str):
            raise web.HTTPError(400, "server_name must be a string.")
        spawner = user.spawners[server_name] if server_name in user.orm_spawners else None
        owns = getattr(spawner, "owns_token", None)
        if owns is not None:
            # HPCSpawner also knows its token after a hub restart (by its hash)
            valid = owns(token)
        else:
            expected = getattr(spawner, "api_token", None) or ""
            valid = spawner is not None and hmac.compare_digest(expected.encode(), token.encode())
        if spawner is None or not valid:
            raise web.HTTPError(403, "This token does not belong to that server.")
        if not hasattr(spawner, "report_address"):
            raise web.HTTPError(400, "That server is not run by hpcgate.")
        spawner.report_address(host, port, node)
        self.set_status(204)


class SessionsHandler(APIHandler):
    """A user's sessions (default and named servers) with their options and job state."""

    @needs_scope("read:servers")
    async def get(self, user_name: str, session: str | None = None) -> None:
        # not "server_name": needs_scope would filter on "user/None" for the list
        server_name = session
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, "No such user.")
        if server_name is not None:
            if server_name not in user.orm_spawners:
                raise web.HTTPError(404, f"{user_name} has no session {server_name[:64]!r}.")
            names = [server_name]
        else:
            names = sorted(user.orm_spawners, key=lambda n: (n != "", n))
        cards = [await _card(user.spawners[name]) for name in names]
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        if server_name is not None:
            self.write(json.dumps(cards[0]))
            return
        catalog = user.spawner.hpcgate.catalog() if hasattr(user.spawner, "hpcgate") else None
        self.write(
            json.dumps(
                {
                    "sessions": cards,
                    "sessions_per_user": catalog.model.sessions.per_user if catalog else None,
                    "remembered_per_user": catalog.model.sessions.remembered if catalog else None,
                }
            )
        )


class SessionSelfHandler(APIHandler):
    """A running server's own session: what the lab's status bar shows.

    Authenticated by that server's API token only (``owns_token``), so a lab learns
    its end time from the hub and never asks the scheduler itself.
    """

    async def get(self) -> None:
        token = self.get_auth_token()
        user = self.current_user
        if not token or user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "This endpoint takes a server's own API token.")
        spawner = next(
            (
                user.spawners[name]
                for name in list(user.orm_spawners)
                if getattr(user.spawners[name], "owns_token", None) and user.spawners[name].owns_token(token)
            ),
            None,
        )
        if spawner is None:
            raise web.HTTPError(403, "This token does not belong to a server run by hpcgate.")
        card = await _card(spawner)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        keys = ("name", "system", "system_description", "partition", "project", "resources", "job_id",
                "node", "state", "started", "end_time", "now", "energy")
        self.write(json.dumps({k: card[k] for k in keys}))


#: The home page's script and style (``/hub/hpcgate/static/``).
STATIC_DIR = str(Path(__file__).parent / "static")


class StopReasonHandler(APIHandler):
    """The culler's note of why it stops a server; becomes the home page's sentence."""

    @needs_scope("delete:servers")
    async def post(self, user_name: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "Body must be JSON.") from None
        if not isinstance(body, dict) or body.get("reason") not in REASONS or not isinstance(body.get("server", ""), str):
            raise web.HTTPError(400, f"Body must be {{'server': name, 'reason': one of {list(REASONS)}}}.")
        user = self.find_user(user_name)
        server_name = body.get("server", "")
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, "No such server.")
        spawner = user.spawners[server_name]
        limits = getattr(spawner, "cull_limits", None)
        if limits is None:
            raise web.HTTPError(400, "That server is not run by hpcgate.")
        spawner.stop_reason = stop_sentence(body["reason"], limits)
        spawner.orm_spawner.state = spawner.get_state()
        self.db.commit()
        self.log.info("%s/%s: %s", user_name, server_name, spawner.stop_reason)
        self.set_status(204)


def extra_handlers() -> list[tuple]:
    """Routes to add to ``c.JupyterHub.extra_handlers`` (prefixed with the hub's URL)."""
    return [
        (r"/hpcgate/static/(.*)", web.StaticFileHandler, {"path": STATIC_DIR}),
        (r"/api/" + protocol.OFFER_PATH, OfferHandler),
        (r"/api/" + protocol.READY_PATH, ReadyHandler),
        (r"/api/" + protocol.SESSION_PATH, SessionSelfHandler),
        (r"/api/hpcgate/users/([^/]+)/sessions", SessionsHandler),
        (r"/api/hpcgate/users/([^/]+)/sessions/([^/]*)", SessionsHandler),
        (r"/api/hpcgate/energy", EnergyHandler),
        (r"/api/hpcgate/announcements", AnnouncementsHandler),
        (r"/api/hpcgate/users/([^/]+)/stop-reason", StopReasonHandler),
    ]
