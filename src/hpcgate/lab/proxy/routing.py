"""Which app a request goes to, and with which path.

Routes (all under the server's ``base_url``):

``proxy/<port>/...``            to ``localhost:<port>``, prefix stripped
``proxy/absolute/<port>/...``   to ``localhost:<port>``, full path kept
``proxy/<host>:<port>/...``     to an allowlisted host (also with ``absolute/``)
``<app>/...``                   to a named app, started on first request
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..security import HostNotAllowed, parse_host
from ..upstream import Target
from .errors import ProxyError

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

    from ..apps.manager import ManagedApp
    from ..context import LabContext


@dataclass
class Route:
    """Where one request goes.

    ``prefix`` is the path the browser sees for the app (no trailing slash);
    ``upstream_path`` the path and query sent to it; ``target`` is ``None`` for a named
    app (its address is known once it runs); ``redirect`` set means: answer with a
    redirect there instead of proxying.
    """

    prefix: str
    upstream_path: str = "/"
    target: Target | None = None
    redirect: str = ""


def resolve_route(
    lab: LabContext, mode: str, app: ManagedApp | None, request: HTTPServerRequest, handler: Any, websocket: bool
) -> Route:
    """The :class:`Route` of ``request`` (raw, still percent-encoded path); raises :class:`ProxyError`.

    ``mode`` is ``"strip"`` (``proxy/<port>``), ``"absolute"`` (``proxy/absolute/<port>``)
    or ``"app"``; ``handler`` is passed to a callable host allowlist.
    """
    # Still percent-encoded, as the client sent it. A fragment is the browser's own:
    # whatever follows a raw '#' (query included) never reaches the app.
    uri = (request.uri or "/").partition("#")[0]
    raw_path, _, raw_query = uri.partition("?")
    query = lab.app_query(raw_query)
    base = lab.base_url
    target = None
    if mode == "app":
        assert app is not None
        prefix = base + app.spec.name
        rest = raw_path[len(prefix) :]
    else:
        start = base + ("proxy/absolute/" if mode == "absolute" else "proxy/")
        hostport, slash, rest = raw_path[len(start) :].partition("/")
        rest = slash + rest
        prefix = start + hostport
        target = parse_hostport(lab, hostport, handler)
    if not rest:
        if request.method in ("GET", "HEAD") and not websocket:
            return Route(prefix, target=target, redirect=prefix + "/" + ("?" + raw_query if raw_query else ""))
        rest = "/"
    path = raw_path if mode == "absolute" or (app is not None and app.spec.absolute_url) else rest
    if app is not None:
        path = app.spec.map_path(path)
    return Route(prefix, path + ("?" + query if query else ""), target)


def parse_hostport(lab: LabContext, hostport: str, handler: Any) -> Target:
    """The target of ``proxy/<hostport>/``; refused hosts and ports raise :class:`ProxyError`."""
    # Clients percent-encode IPv6 brackets; no other escape is accepted in a host.
    if "%" in hostport:
        hostport = re.sub("%5[bB]", "[", re.sub("%5[dD]", "]", hostport))
    if hostport.isdigit():
        host, port_text = "localhost", hostport
    else:
        host_raw, sep, port_text = hostport.rpartition(":")
        if not sep or not port_text.isdigit() or "@" in hostport:
            # Not a proxy address at all (jupyter-server-proxy's routes do not match it either).
            raise ProxyError(404, reason="Not Found")
        try:
            host = parse_host(host_raw)
        except HostNotAllowed:
            raise ProxyError(403, reason="Host not allowed") from None
        if not lab.allowlist.allows(host, handler):
            raise ProxyError(403, reason="Host not allowed")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ProxyError(400, reason="Bad port")
    if not lab.port_allowed(port, host):
        raise ProxyError(403, reason="Port not allowed")
    return Target(host=host, port=port)
