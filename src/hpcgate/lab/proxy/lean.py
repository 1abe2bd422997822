"""Small GETs answered below tornado's request handler: the lean path.

A page of an app (RStudio, VS Code, a dashboard) loads hundreds of small files. For
each, tornado builds a request handler (its default headers, its ``initialize`` chain),
runs a chain of coroutines (``_execute``, ``prepare``, ``get``) and a log record. For a
``GET`` or ``HEAD`` whose credentials the Jupyter server accepted a moment ago
(:mod:`..authcache`), :class:`LeanRouter` answers with a :class:`LeanAnswer` instead,
which does what the proxy's handler would do, without the handler.

Contracts:

* Tornado's routing still decides: the lean router finds the delegate the rest of the
  application's rules give (:meth:`LeanRouter.find_handler`), and only a request that
  goes to :class:`~hpcgate.lab.proxy.handler.ProxyHandler` is considered.
* A lean answer is taken only where the handler would take exactly these steps: a
  ``GET``/``HEAD`` without body or ``Upgrade``, credentials remembered by the auth cache
  and not token-authenticated, a ``Host`` the Jupyter server accepted before, path
  arguments tornado can decode, a ``proxy/<port>`` route (no callable host allowlist,
  no ``non_service_rewrite_response``) or a running app without static files,
  rewriters, raw sockets or a callable ``update_last_activity``; no output transforms;
  a ``log_function`` that is the Jupyter server's or JupyterHub's (jupyterhub-singleuser's).
* It answers only a 2xx or 304 with a body of at most ``SMALL_BODY`` bytes (or none),
  and logs it as the handler does: the request-duration metric alone where the Jupyter
  server's log function would only add a DEBUG line nobody sees, else the log function
  itself, given a stand-in of the handler. The answer's headers are made
  the handler's way: the server's default headers (taken once from a real handler:
  they depend on the settings only), CORS by the Jupyter server's own
  ``set_cors_headers``, the app's status and headers through the shared
  :meth:`~.proxied.ProxiedRequest._apply_headers` and tornado's own header functions,
  and tornado's ``finish`` rules (Content-Length, 204/304 representation headers).
* Everything else goes to the regular handler, which then runs its whole path:
  before the app was asked (nothing counted yet), with the app's answer read up to its
  head (:class:`~.proxied.Handover`), or after the lean attempt on a pooled connection
  failed (the handler tries a fresh connection, as after its own first attempt, and
  answers 502 or 403 as always).
* Activity, the lab's request and byte counters and the Jupyter server's
  request-duration histogram are recorded as the handler records them; lean answers
  are counted besides (``hpcgate_lab_proxy_lean_answers_total``).
* ``HPCGateLab.lean_answers = False`` sends every request through the handler.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.identity import IdentityProvider
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.handlers import log as jupyter_log
from jupyter_server.log import log_request as jupyter_log_request
from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.routing import AnyMatches, Router, Rule
from tornado.web import RequestHandler

from ..apps.manager import AppState
from ..metrics import PORT_LABEL
from ..upstream import Connection, UpstreamError, UpstreamResponse, read_response_head
from .base import HANDLER_LABEL, metrics_only
from .errors import ProxyError
from .handler import ProxyHandler
from .http import SMALL_BODY
from .proxied import REPLACED_DEFAULTS, Handover, ProxiedRequest, no_count
from .routing import Route, resolve_route

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.web import Application

    from ..apps.manager import ManagedApp
    from ..context import LabContext


def _reads_only_the_basics(log_function: Any) -> bool:
    """Whether ``log_function`` is one known to read of a handler only what a log
    stand-in has (:meth:`LeanAnswer._log_stand_in`): the Jupyter server's
    ``log_request`` (with DEBUG shown) and JupyterHub's, which jupyterhub-singleuser
    installs (an INFO line per request and its request-duration histogram)."""
    func = log_function.func if isinstance(log_function, functools.partial) else log_function
    if func is jupyter_log_request:
        return True
    # loaded wherever it is the log function (importing it costs half a second)
    hub_log = sys.modules.get("jupyterhub.log")
    return hub_log is not None and func is getattr(hub_log, "log_request", None)


def _bodiless(status: int) -> bool:
    """Statuses whose answers tornado's ``finish`` sends without body or representation headers."""
    return status in (204, 304) or 100 <= status < 200


class LeanRouter(Router):
    """The first rule of the application's router: a :class:`LeanAnswer` where one
    applies, otherwise the delegate the application's other rules give."""

    def __init__(self, application: Application, lab: LabContext):
        self.application = application
        self.lab = lab
        self.rule = Rule(AnyMatches(), self)
        self._defaults: httputil.HTTPHeaders | None = None

    def install(self) -> None:
        """Put this router before every other rule of the application."""
        self.application.default_router.rules.insert(0, self.rule)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> httputil.HTTPMessageDelegate | None:
        lab = self.lab
        if not lab.lean_answers or request.method not in ("GET", "HEAD"):
            return None
        path = request.path
        base = lab.base_url
        if not path.startswith(base):
            return None
        first = path[len(base) :].partition("/")[0]
        if first != "proxy" and first not in lab.manager.apps:
            return None
        regular = self._regular(request)
        if getattr(regular, "handler_class", None) is not ProxyHandler:
            return regular
        return self._lean(request, regular) or regular

    def _regular(self, request: HTTPServerRequest) -> httputil.HTTPMessageDelegate | None:
        """What the application's rules other than this one give (``RuleRouter.find_handler``)."""
        router = self.application.default_router
        for rule in router.rules:
            if rule is self.rule:
                continue
            params = rule.matcher.match(request)
            if params is not None:
                if rule.target_kwargs:
                    params["target_kwargs"] = rule.target_kwargs
                delegate = router.get_target_delegate(rule.target, request, **params)
                if delegate is not None:
                    return delegate
        return None

    def _lean(self, request: HTTPServerRequest, regular: Any) -> LeanAnswer | None:
        """A :class:`LeanAnswer` if the request qualifies (module docstring), else None."""
        lab = self.lab
        headers = request.headers
        if "Upgrade" in headers or "Content-Length" in headers or "Transfer-Encoding" in headers:
            return None
        kwargs = regular.handler_kwargs
        if kwargs.get("lab") is not lab or kwargs.get("handover") is not None:
            return None
        try:  # as RequestHandler._execute decodes them (a 400 otherwise)
            for arg in (*regular.path_args, *regular.path_kwargs.values()):
                if arg is not None:
                    arg.decode("utf-8")
        except UnicodeDecodeError:
            return None
        cache = lab.auth_cache
        key = cache.key(request.method, headers, request.query_arguments)
        remembered = cache.get(key) if key is not None else None
        if remembered is None or remembered[1]:
            return None  # not remembered, or token-authenticated (CORS and XSRF differ)
        if request.host not in lab.allowed_hosts:
            return None
        application = self.application
        settings = application.settings
        provider = settings.get("identity_provider")
        if (
            application.transforms
            or provider is None
            or type(provider).is_token_authenticated is not IdentityProvider.is_token_authenticated
        ):
            return None
        # the same for every status a lean answer sends (2xx, 304); None: the log function runs
        log_function = settings.get("log_function")
        record_duration = metrics_only(log_function, 200, jupyter_log())
        if record_duration is None and not _reads_only_the_basics(log_function):
            return None
        name = kwargs.get("app")
        app = lab.manager.get(name) if name else None
        if app is not None:
            spec = app.spec
            if spec.static_files or spec.raw_socket_proxy or spec.rewrite_response or callable(spec.update_last_activity):
                return None
            if spec.managed and not (app.state == AppState.RUNNING and app.pid is not None):
                return None  # ensure_running would start it
        elif lab.non_service_rewrite_response or lab.allowlist.calls_code:
            return None
        try:
            route = resolve_route(lab, kwargs["mode"], app, request, None, False)
        except ProxyError:
            return None
        if route.redirect:
            return None
        defaults = self._defaults if self._defaults is not None else self._take_defaults(request, kwargs)
        return LeanAnswer(self, regular, request, kwargs["mode"], app, route, remembered[0], record_duration, defaults)

    def _take_defaults(self, request: HTTPServerRequest, kwargs: dict[str, Any]) -> httputil.HTTPHeaders:
        """The headers a new proxy handler starts with (tornado's and the Jupyter server's
        defaults: they depend on the server's settings only), taken once from a real one,
        without those every proxied answer drops (``REPLACED_DEFAULTS``: removing them
        first or later leaves the same headers in the same order)."""
        handler = ProxyHandler(self.application, request, **kwargs)
        request.connection.set_close_callback(None)  # type: ignore[union-attr]
        defaults = httputil.HTTPHeaders(handler._headers)
        for name in REPLACED_DEFAULTS:
            if name in defaults:
                del defaults[name]
        self._defaults = defaults
        return defaults


class LeanAnswer(httputil.HTTPMessageDelegate, ProxiedRequest):
    """One small GET or HEAD answered without a tornado handler (module docstring)."""

    # tornado's and the Jupyter server's own functions for the response's head, so that
    # it comes out exactly as the handler would make it (they use only the attributes
    # set below: _headers, _status_code, _reason, settings, request, current_user)
    set_status = RequestHandler.set_status
    set_header = RequestHandler.set_header
    add_header = RequestHandler.add_header
    clear_header = RequestHandler.clear_header
    _convert_header_value = RequestHandler._convert_header_value
    _clear_representation_headers = RequestHandler._clear_representation_headers
    set_cors_headers = JupyterHandler.set_cors_headers
    get_origin = JupyterHandler.get_origin
    allow_origin = JupyterHandler.allow_origin
    allow_origin_pat = JupyterHandler.allow_origin_pat
    allow_credentials = JupyterHandler.allow_credentials
    identity_provider = JupyterHandler.identity_provider
    token_authenticated = JupyterHandler.token_authenticated

    def __init__(
        self,
        router: LeanRouter,
        regular: Any,
        request: HTTPServerRequest,
        mode: str,
        app: ManagedApp | None,
        route: Route,
        user: Any,
        record_duration: bool | None,
        defaults: httputil.HTTPHeaders,
    ):
        self.router = router
        self.regular = regular  # tornado's delegate for the handler: the way to hand over
        self.request = request
        self.settings = router.application.settings
        self.lab = router.lab
        self.mode = mode
        self.app = app
        self.prefix, self.upstream_path = route.prefix, route.upstream_path
        self.target = app.target if app is not None else route.target
        self.current_user = user
        self.conn: Connection | None = None
        self._last_touch = 0.0
        self._bytes_in = self._bytes_out = no_count
        self._client_gone = False
        self._record_duration = record_duration  # metrics_only() for a 2xx or 304 (None: log_function runs)
        self._defaults = defaults  # LeanRouter._take_defaults
        self._start_line: httputil.RequestStartLine | None = None
        self._request_headers: httputil.HTTPHeaders | None = None

    # ------------------------------------------------------------ tornado's delegate

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        self._start_line, self._request_headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        """Never called: requests with a body are not answered here."""

    def finish(self) -> None:
        self.request.connection.set_close_callback(self._closed)  # type: ignore[union-attr]
        IOLoop.current().add_future(asyncio.ensure_future(self._answer()), lambda f: f.result())

    def on_connection_close(self) -> None:
        self._closed()

    def _closed(self) -> None:
        self._client_gone = True
        if self.conn is not None:
            self.conn.close()  # the browser left: free the app's connection

    # ------------------------------------------------------------ the answer

    async def _answer(self) -> None:
        assert self.target is not None
        try:
            head = self._request_head(chunked=False)
            conn, _ = await self.lab.pool.acquire(self.target)
        except Exception:  # refused, another user's port, a head encode_head refuses...
            self._hand_over(Handover())  # the handler answers as it does (502, 403, 500)
            return
        self.conn = conn
        try:
            conn.writer.write(head)
            resp = await read_response_head(conn, self.request.method or "GET")
        except Exception:
            conn.close()
            self._hand_over(Handover())  # the handler tries a fresh connection
            return
        if not self._answerable(resp):
            self._hand_over(Handover(resp))
            return
        try:
            self._compose(resp)
        except Exception:  # e.g. a header value tornado refuses: the handler's own error answer
            self._hand_over(Handover(resp))
            return
        try:
            await self._send(resp)
        except Exception:
            self._cut(conn)  # not expected; never leave the browser waiting
            raise

    def _answerable(self, resp: UpstreamResponse) -> bool:
        """Whether this answer is one a lean answer sends (module docstring)."""
        status = resp.status
        if self._client_gone or not (200 <= status < 300 or status == 304):
            return False
        return resp.framing == "none" or (resp.framing == "length" and (resp.length or 0) <= SMALL_BODY)

    def _compose(self, resp: UpstreamResponse) -> None:
        """The response head as the handler makes it: defaults, CORS, the app's head."""
        self._headers = httputil.HTTPHeaders(self._defaults)
        self._status_code, self._reason = 200, httputil.responses[200]
        self.set_cors_headers()
        self._apply_headers(resp)
        if _bodiless(self._status_code):
            self._clear_representation_headers()

    async def _send(self, resp: UpstreamResponse) -> None:
        conn = resp.conn
        self._count_request()
        self.lab.metrics.lean_counter(self.app.spec.name if self.app is not None else PORT_LABEL)()
        self._touch()
        body = b""
        if resp.framing == "length":
            try:
                body = await resp.read_all(SMALL_BODY)
            except UpstreamError:
                self._cut(conn)  # as the handler does when the app's answer breaks off
                self._log()
                return
            self._bytes_out(len(body))
        else:
            resp.complete = True
        if not _bodiless(self._status_code) and "Content-Length" not in self._headers:
            self.set_header("Content-Length", len(body))
        connection = self.request.connection
        assert connection is not None
        connection.set_close_callback(None)
        start_line = httputil.ResponseStartLine("", self._status_code, self._reason)
        written = connection.write_headers(start_line, self._headers, b"" if self.request.method == "HEAD" else body)
        connection.finish()
        self._log()
        try:
            await written
        except StreamClosedError:
            conn.close()
            return
        if resp.complete and resp.keep_alive:
            self.lab.pool.release(conn)
        else:
            conn.close()

    def _cut(self, conn: Connection) -> None:
        """Close the app's connection and the browser's (if it is still there)."""
        conn.close()
        if not self._client_gone:
            self.request.connection.close()  # type: ignore[union-attr]

    def _log(self) -> None:
        """What the handler's ``_log`` records for this answer: the duration metric, or
        whatever the server's log function makes of the handler (a stand-in for it)."""
        if self._record_duration is None:
            self.router.application.log_request(self._log_stand_in())
        elif self._record_duration:
            self.lab.metrics.observe_request_duration(
                HANDLER_LABEL, self.request.method or "", self._status_code, self.request.request_time()
            )

    def _log_stand_in(self) -> ProxyHandler:
        """The handler as the known log functions read it: its class, application,
        request, status and headers, and the user; made without tornado's ``__init__``
        (nothing else of it is ever used)."""
        handler = ProxyHandler.__new__(ProxyHandler)
        handler.application = self.router.application
        handler.request = self.request
        handler._status_code, handler._reason, handler._headers = self._status_code, self._reason, self._headers
        handler.current_user = self.current_user
        return handler

    def _hand_over(self, handover: Handover) -> None:
        """Let the proxy's handler answer this request (it runs its whole path)."""
        regular = self.regular
        regular.handler_kwargs = {**regular.handler_kwargs, "handover": handover}
        self.request.connection.set_close_callback(None)  # type: ignore[union-attr]
        regular.headers_received(self._start_line, self._request_headers)
        regular.finish()
