"""Hub API routes of hpcgate (``c.JupyterHub.extra_handlers = hpcgate.hub.extra_handlers()``).

- ``GET  /hub/api/hpcgate/offer``: what the calling user may launch (catalog offer).
- ``POST /hub/api/hpcgate/ready``: a starting server reports ``{"host", "port"}``.
  Only that server's own API token is accepted; the spawner never guesses the port.
  The whole body is checked before any spawner is looked up or told anything.

These must run inside the hub process (they talk to live spawner objects), which is why
they are extra handlers and not a separate JupyterHub service.
"""

from __future__ import annotations

import hmac
import json
import re

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .. import protocol
from ..catalog import HOST_PATTERN


class OfferHandler(APIHandler):
    """The calling user's offer: systems, partitions with limits, projects."""

    async def get(self) -> None:
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "Log in, or send a token, to see what you may launch.")
        spawner = user.spawner
        offer = spawner.hpcgate.catalog().offer(spawner.user_info())
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(offer.as_json()))


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
        unknown = sorted(set(body) - {"host", "port", "server_name"})
        if unknown:
            raise web.HTTPError(400, f"Unknown key {unknown[0][:40]!r}: send only host, port and server_name.")
        host, port, server_name = body.get("host"), body.get("port"), body.get("server_name", "")
        if not isinstance(host, str) or not re.fullmatch(HOST_PATTERN, host):
            raise web.HTTPError(400, "host must be a host name or an IP address.")
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
        spawner.report_address(host, port)
        self.set_status(204)


def extra_handlers() -> list[tuple[str, type]]:
    """Routes to add to ``c.JupyterHub.extra_handlers`` (prefixed with the hub's URL)."""
    return [
        (r"/api/" + protocol.OFFER_PATH, OfferHandler),
        (r"/api/" + protocol.READY_PATH, ReadyHandler),
    ]
