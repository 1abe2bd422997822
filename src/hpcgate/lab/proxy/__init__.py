"""The streaming HTTP and WebSocket proxy.

Routes (all under the server's ``base_url``; see :mod:`.routing`):

``proxy/<port>/...``            to ``localhost:<port>``, prefix stripped
``proxy/absolute/<port>/...``   to ``localhost:<port>``, full path kept
``proxy/<host>:<port>/...``     to an allowlisted host (also with ``absolute/``)
``<app>/...``                   to a named app, started on first request

Contracts:

* Nothing reaches an app before the request is authenticated by the Jupyter server
  (websocket upgrades included); state-changing requests authenticated by cookie
  must come from the server's own origin (:mod:`.base`).
* Bodies stream both ways: at most a couple of chunks are held per request, a slow
  reader slows the writer (awaited ``flush``/``drain``) (:mod:`.http`).
* Websockets: the app's handshake comes first (the browser's 101 carries its answer),
  then frames are relayed verbatim both ways, at most one chunk held per direction
  (:mod:`.wsrelay`); only ``raw_socket_proxy`` apps get tornado's framing (:mod:`.websocket`).
* Response headers are sent as soon as the app sends them (SSE, long polls).
* Error pages are plain text and never contain the requested host or path.

Modules: ``routing`` (which app, which path), ``base`` (authentication, errors, the
connection towards the app), ``proxied`` (what the handler and lean answers share: the
request head, activity, counters, the response's headers), ``http`` (HTTP streaming,
rewriting), ``splice`` (large bodies off the event loop), ``websocket``, ``wsrelay`` and
``wsframes`` (websockets), ``handler`` (the tornado handler joining them), ``lean``
(small GETs the auth cache knows, answered below the handler with the same answers).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from jupyter_server.utils import url_path_join

from .errors import ProxyError
from .handler import ProxyHandler
from .http import RewritableResponse

if TYPE_CHECKING:
    from ..context import LabContext

__all__ = ["PORT_ROUTES", "ProxyError", "ProxyHandler", "RewritableResponse", "proxy_handlers"]


#: the first PORT_ROUTES entries of proxy_handlers() are the proxy/<port> routes, the rest named apps
PORT_ROUTES = 2


def proxy_handlers(lab: LabContext) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado routes for the proxy (the first :data:`PORT_ROUTES`) and every named app
    (patterns without base_url)."""
    handlers: list[tuple[str, type, dict[str, Any]]] = [
        (r"proxy/absolute/([^/]+)(/.*)?", ProxyHandler, {"lab": lab, "mode": "absolute"}),
        (r"proxy/([^/]+)(/.*)?", ProxyHandler, {"lab": lab, "mode": "strip"}),
    ]
    for name in lab.manager.apps:
        handlers.append((url_path_join(re.escape(name)) + r"(/.*)?", ProxyHandler, {"lab": lab, "mode": "app", "app": name}))
    return handlers
