"""The lab's own session, as the hub knows it: ``GET <base>/hpcgate/api/session``.

The JupyterLab status-bar item (system, node, job id, time left, warnings before the
wall time ends) reads this. The server asks the hub
(``GET $JUPYTERHUB_API_URL/hpcgate/session``) with its own API token
(``$JUPYTERHUB_API_TOKEN``), never the scheduler: the hub's shared status cache already
knows the job's node and end time. Answers are kept for ``CACHE_SECONDS`` so that many
open browser tabs cost the hub one request per interval.

The answer is the hub's JSON plus ``fetched`` (this server's clock when it asked), so
the browser can correct for clocks that differ. Without a hub (a lab started by hand)
the route answers 404 with a sentence.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .. import protocol

#: Seconds a hub answer is reused.
CACHE_SECONDS = 20.0


class _HubSession:
    """The last answer of the hub about this server (one per process)."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None
        self.at = 0.0

    async def get(self) -> dict[str, Any]:
        if self.answer is not None and time.monotonic() - self.at < CACHE_SECONDS:
            return self.answer
        api_url = os.environ.get("JUPYTERHUB_API_URL", "")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not api_url or not token:
            raise web.HTTPError(404, "This server was not started by a hub: it has no session to show.")
        request = HTTPRequest(
            api_url.rstrip("/") + "/" + protocol.SESSION_PATH,
            headers={"Authorization": f"token {token}"},
            request_timeout=10,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            raise web.HTTPError(502, f"The hub did not say ({exc.code}); try again later.") from None
        except OSError as exc:
            raise web.HTTPError(502, f"The hub cannot be reached ({exc}); try again later.") from None
        data = json.loads(response.body)
        if not isinstance(data, dict):
            raise web.HTTPError(502, "The hub's answer was not a JSON object.")
        data["fetched"] = time.time()
        self.answer, self.at = data, time.monotonic()
        return data


class SessionHandler(APIHandler):
    _track_activity = False  # the status bar polling is not user activity

    def initialize(self, hub: _HubSession) -> None:  # type: ignore[override]
        self.hub = hub

    @web.authenticated
    async def get(self) -> None:
        data = await self.hub.get()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))


def session_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"hpcgate/api/session", SessionHandler, {"hub": _HubSession()})]
