"""jupyter-server-proxy's ``handlers`` names, on hpcgate's proxy.

:class:`ProxyHandler` is for code that subclasses jupyter-server-proxy's handler and
routes requests itself: its methods call ``self.proxy(host, port, proxied_path)`` (HTTP)
and ``self.proxy_open(host, port, proxied_path)`` (websockets, from ``open``). The
request is authenticated, the host checked against the allowlist and the port policy,
and then streamed like every other request of ``<base>/proxy/<host>:<port>/``.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..proxy import ProxyHandler as _HPCGateProxyHandler
from ..proxy import RewritableResponse
from ..proxy.routing import parse_hostport

__all__ = ["AddSlashHandler", "ProxyHandler", "RewritableResponse"]


class AddSlashHandler(JupyterHandler):
    """Redirects to the same URL with a trailing slash (authenticated)."""

    @web.authenticated
    def get(self, *args: Any) -> None:
        parts = urlsplit(self.request.uri or "/")
        self.redirect(urlunsplit(parts._replace(path=parts.path + "/")))


class ProxyHandler(_HPCGateProxyHandler):
    """jupyter-server-proxy's ``ProxyHandler`` API: subclass and call ``proxy``/``proxy_open``.

    Registered without arguments (the lab is found in the application's settings).
    Request bodies are read whole before ``proxy`` runs, as jupyter-server-proxy does.
    """

    _stream_request_body = False  # the subclass decides the target after the body is in

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        lab = self.settings.get("hpcgate_lab")
        if lab is None:
            raise RuntimeError("hpcgate.lab is not loaded in this server; jupyter-server-proxy handlers need it")
        super().initialize(lab=lab, mode="absolute" if kwargs.get("absolute_url") else "strip")

    async def prepare(self) -> None:  # type: ignore[override]
        await self._authenticate()

    def _set_target(self, host: str, port: int | str, proxied_path: str) -> None:
        self.target = parse_hostport(self.lab, f"{host}:{port}", self)
        host_and_port = str(port) if host == "localhost" else f"{host}:{port}"
        self.prefix = url_path_join(self.lab.base_url, "proxy", host_and_port)
        uri = (self.request.uri or "/").partition("#")[0]
        query = self.lab.app_query(uri.partition("?")[2])
        self.upstream_path = "/" + proxied_path.lstrip("/") + ("?" + query if query else "")
        self._touch()

    async def proxy(self, host: str, port: int | str, proxied_path: str = "") -> None:
        """Proxy this (HTTP) request to ``host:port`` at ``/proxied_path``."""
        self._set_target(host, port, proxied_path)
        if self.request.body:
            await self._open_upload()
            assert self.body_writer is not None
            await self.body_writer.write(self.request.body)
        await self._proxy_http()

    async def proxy_open(self, host: str, port: int | str, proxied_path: str = "") -> None:
        """Relay this websocket to ``host:port`` at ``/proxied_path``."""
        self._set_target(host, port, proxied_path)
        await self._open_websocket()

    async def http_get(self, host: str, port: int | str, proxy_path: str = "") -> None:
        await self.proxy(host, port, proxy_path)

    async def get(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        result = self.open(*args, **kwargs) if self._is_websocket() else self.http_get(*args, **kwargs)
        if inspect.isawaitable(result):
            await result

    async def _by_method(self, host: str, port: int | str, proxy_path: str = "") -> None:
        await self.proxy(host, port, proxy_path)

    head = post = put = patch = delete = options = _by_method  # type: ignore[assignment]
