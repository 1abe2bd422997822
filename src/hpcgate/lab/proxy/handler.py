"""The proxy's request handler: one request (HTTP or websocket) to one app.

:class:`ProxyHandler` joins the HTTP side (:mod:`.http`) and the websocket side
(:mod:`.websocket`) on their shared base (:mod:`.base`); this module holds what
decides between them: ``prepare`` (authentication, route, app start) and the
method dispatch.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from ..apps.manager import AppStartError
from .errors import ProxyError
from .http import HTTPProxy
from .routing import resolve_route
from .websocket import WebSocketProxy


@web.stream_request_body
class ProxyHandler(WebSocketProxy, HTTPProxy):
    """Proxies one request (HTTP or websocket) to one app. See :mod:`hpcgate.lab.proxy`."""

    async def prepare(self) -> None:  # type: ignore[override]
        if not await self._authenticate():
            return
        route = resolve_route(self.lab, self.mode, self.app, self.request, self, self._is_websocket())
        self.prefix, self.upstream_path, self.target = route.prefix, route.upstream_path, route.target
        if route.redirect:
            self._early_redirect(route.redirect)
            return
        if self.app is not None:
            try:
                await self.app.ensure_running()
            except AppStartError:
                raise ProxyError(503, reason="App failed to start; see its log in the hpcgate API") from None
            self.target = self.app.target
        self._count_request()
        self._touch()
        if self._is_websocket():
            return
        if self._static():
            return  # answered in get()/head(), after tornado has read the request
        if self.app is not None and self.app.spec.raw_socket_proxy:
            raise ProxyError(405, reason="This app only accepts websocket connections")
        if self._has_body():
            await self._open_upload()

    async def get(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self._is_websocket():
            await self._open_websocket()
        elif self._static():
            self._serve_static()
        else:
            await self._proxy_http()

    async def _other_method(self, *args: Any) -> None:
        if self._static():
            self._serve_static()
        else:
            await self._proxy_http()

    head = post = put = patch = delete = options = _other_method  # type: ignore[assignment]

    def on_finish(self) -> None:
        self._drop_handover()

    def _drop_handover(self) -> None:
        """Close the app's answer a lean answer handed over if this request never used it
        (refused, redirected, or the browser left)."""
        if self.handover is not None and self.handover.response is not None:
            self.handover.response.conn.close()
            self.handover.response = None

    def on_close(self) -> None:
        self._client_gone = True
        self._drop_handover()
        if self.ws_conn is not None and not self._finished:
            self.ws_conn.close()  # browser left during the app's handshake
        if self.raw_conn is not None:
            self.raw_conn.close()
        if self.conn is not None and not self._finished:
            self.conn.close()  # browser left mid-download: free the app's connection
