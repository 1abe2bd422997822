"""What HTTP and websocket proxying share: authentication, errors, the way to the app.

:class:`ProxyBase` is the base of :class:`~hpcgate.lab.proxy.handler.ProxyHandler`:
the Jupyter server's authentication and origin checks, plain-text error pages, the
request's log, and the connections towards the app; the request head, activity and
counters come from :class:`~.proxied.ProxiedRequest` (shared with :mod:`.lean`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.log import log_request as jupyter_log_request
from tornado.websocket import WebSocketHandler

from ..upstream import Connection, ForeignSocketError, Target, UpstreamError, open_connection
from .errors import ProxyError
from .proxied import Handover, ProxiedRequest, no_count

if TYPE_CHECKING:
    from ..apps.manager import ManagedApp
    from ..context import LabContext

#: Host header values whose check_host acceptance a lab remembers (ProxyBase._host_allowed)
HOSTS_REMEMBERED = 64
#: the ``handler`` label of the proxy's requests in the Jupyter server's request-duration histogram
HANDLER_LABEL = "hpcgate.lab.proxy.handler.ProxyHandler"


def _shows_debug(logger: logging.Logger | logging.LoggerAdapter) -> bool:
    """Whether a DEBUG record of ``logger`` would reach any handler that emits it."""
    if isinstance(logger, logging.LoggerAdapter):
        logger = logger.logger
    if not logger.isEnabledFor(logging.DEBUG):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(h.level <= logging.DEBUG for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def metrics_only(log_function: Any, status: int, logger: logging.Logger | logging.LoggerAdapter) -> bool | None:
    """What the Jupyter server's ``log_function`` would do for a proxied answer with ``status``.

    None: it has to run (an error or redirect is logged above DEBUG, DEBUG is shown
    somewhere, or the deployment set its own function). Otherwise it would only write
    a DEBUG line nobody sees and record its Prometheus histogram (recorded as its
    ``prometheus_log_method`` does: same histogram, same labels) if the result is True.
    """
    if (
        (status < 300 or status == 304)
        and isinstance(log_function, functools.partial)
        and log_function.func is jupyter_log_request
        and not log_function.args
        and set(log_function.keywords) <= {"record_prometheus_metrics"}
        and not _shows_debug(logger)
    ):
        # the Jupyter server's own setting: partial(log_request, record_prometheus_metrics=...)
        return bool(log_function.keywords.get("record_prometheus_metrics", True))
    return None


class ProxyBase(WebSocketHandler, JupyterHandler, ProxiedRequest):
    """Proxies one request (HTTP or websocket) to one app: the shared part."""

    def initialize(self, lab: LabContext, mode: str, app: str | None = None, handover: Handover | None = None) -> None:  # type: ignore[override]
        # mode: "strip" (proxy/<port>), "absolute" (proxy/absolute/<port>) or "app";
        # handover: what a lean answer (.lean) left to this handler
        self.lab = lab
        self.handover = handover
        self.mode = mode
        self.app: ManagedApp | None = lab.manager.get(app) if app else None
        self.target: Target | None = None
        self.prefix = ""  # path prefix the browser sees for this app, no trailing slash
        self.upstream_path = "/"
        self.conn: Connection | None = None
        self._last_touch = 0.0
        self._client_gone = False
        self._websocket: bool | None = None  # whether this is an upgrade (read once)
        # hpcgate_lab_proxy_bytes_total of this request's app (set once the target is known)
        self._bytes_in: Callable[[float], None] = no_count
        self._bytes_out: Callable[[float], None] = no_count

    # ------------------------------------------------------------ auth and errors

    def check_xsrf_cookie(self) -> None:
        """Cookie-authenticated state changes must come from our own origin.

        Apps have their own CSRF protection and never see Jupyter's ``_xsrf`` token, so
        the check here is the Origin/Referer one the Jupyter server applies to APIs.
        """
        if not hasattr(self, "_jupyter_current_user"):
            return
        if self.token_authenticated or self.settings.get("disable_check_xsrf", False):
            return
        if not JupyterHandler.check_origin(self):
            raise ProxyError(403, reason="Cross-origin request refused")

    def check_origin(self, origin: str | None = None) -> bool:  # websocket handshake
        return JupyterHandler.check_origin(self)

    # ------------------------------------------------------------ caching is the app's

    def compute_etag(self) -> str | None:
        """None: the app's response passes without an Etag of tornado's making.

        tornado would hash every small body it sends whole (a SHA-1 per request) and
        add that Etag to the app's response.
        """
        return None

    def check_etag_header(self) -> bool:
        """False: an ``If-None-Match`` is the app's to answer (its 304 passes through);
        tornado would answer 304 itself when the app's Etag matched, without asking
        whether the app still considers the copy fresh."""
        return False

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Plain text, fixed messages: nothing from the URL is ever reflected.
        self.clear_header("Content-Security-Policy")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        # An error raised before the body was read ends the connection: say so, so
        # clients do not reuse it.
        self.set_header("Connection", "close")
        self.finish(f"{status_code} {self._reason}\n")

    def _log(self) -> None:
        """The request's log line and metrics, as the Jupyter server records them.

        The Jupyter server's ``log_request`` writes successes at DEBUG level, formatting
        each line (and building a log record) even where no handler shows DEBUG. For a
        proxied success that nobody would see, only the Prometheus metrics are recorded
        (:func:`metrics_only`); everything else (errors, a deployment's own
        ``log_function``, DEBUG logging on) goes the usual way.
        """
        status = self.get_status()
        record = metrics_only(self.settings.get("log_function"), status, self.log)
        if record is None:
            super()._log()
        elif record:
            self.lab.metrics.observe_request_duration(
                HANDLER_LABEL, self.request.method or "", status, self.request.request_time()
            )

    def _early_redirect(self, url: str) -> None:
        # Answered in prepare(), before tornado read the (streamed) body: the
        # connection ends afterwards, so tell the client not to reuse it.
        self.set_header("Connection", "close")
        self.redirect(url)

    async def _authenticate(self) -> bool:
        """The Jupyter server's authentication; False if the request was answered here.

        Every request and every websocket upgrade needs it: a page load without it is
        redirected to the login page, anything else refused with 403.
        """
        cache = self.lab.auth_cache
        request = self.request
        key = None if self._is_websocket() else cache.key(request.method, request.headers, request.query_arguments)
        if key is not None:
            remembered = cache.get(key)
            if remembered is not None:
                self._accept_remembered(*remembered)
                return True
        await JupyterHandler.prepare(self)
        if self._finished:
            return False
        if key is not None and self.current_user is not None and not getattr(self, "_new_cookie", None):
            # an identity whose check set a cookie (a token signed into a login cookie)
            # is not remembered: that answer needs the full path every time
            cache.put(key, self.current_user, bool(getattr(self, "_token_authenticated", False)))
            self._remember_host()  # prepare() ran check_host and it accepted
        if self.current_user is None:
            if self.request.method in ("GET", "HEAD") and not self._is_websocket():
                url = self.get_login_url()
                sep = "&" if "?" in url else "?"
                self._early_redirect(url + sep + "next=" + quote(self.request.uri or "/", safe=""))
                return False
            raise ProxyError(403)  # "Forbidden", as the Jupyter server and jupyter-server-proxy answer
        with contextlib.suppress(AttributeError):
            self.request.connection.set_max_body_size(self.lab.max_body_size)  # type: ignore[union-attr]
        return True

    def _accept_remembered(self, user: Any, token_authenticated: bool) -> None:
        """What ``JupyterHandler.prepare`` does for a GET whose credentials the identity
        provider accepted a moment ago (:mod:`..authcache`): the Host check, the user,
        the CORS headers. No XSRF check: ``prepare`` runs none for GET and HEAD."""
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        if not self._host_allowed():
            self.current_user = self._jupyter_current_user = None
            raise ProxyError(403)
        self.current_user = self._jupyter_current_user = user
        if token_authenticated:
            self._token_authenticated = True
        self.set_cors_headers()
        with contextlib.suppress(AttributeError):
            self.request.connection.set_max_body_size(self.lab.max_body_size)  # type: ignore[union-attr]

    def _host_allowed(self) -> bool:
        """``JupyterHandler.check_host``, its acceptances remembered per ``Host`` value.

        Its answer depends on the ``Host`` value and the server's settings
        (``allow_remote_access``, ``local_hostnames``: fixed once the server runs) only,
        except for a ``Host`` naming a unix socket (percent-encoded path, checked on the
        filesystem): such Hosts, and every refusal (logged each time), are asked anew on
        every request. At most ``HOSTS_REMEMBERED`` values are remembered (the header is
        the client's to choose).
        """
        if self.request.host in self.lab.allowed_hosts:
            return True
        if not self.check_host():
            return False
        self._remember_host()
        return True

    def _remember_host(self) -> None:
        """Remember that check_host accepted this request's ``Host`` (see :meth:`_host_allowed`)."""
        host = self.request.host
        known = self.lab.allowed_hosts
        if "%" not in host and "/" not in host and len(known) < HOSTS_REMEMBERED:
            known.add(host)

    def _is_websocket(self) -> bool:
        if self._websocket is None:
            self._websocket = self.request.headers.get("Upgrade", "").lower() == "websocket"
        return self._websocket

    # ---------------------------------------------------------------- upstream

    async def _connect(self, reuse: bool) -> Connection:
        assert self.target is not None
        try:
            if reuse:
                conn, _ = await self.lab.pool.acquire(self.target)
                return conn
            return await open_connection(self.target, self.lab.check_owner)
        except ForeignSocketError:
            raise ProxyError(403, reason="That port belongs to another user") from None
        except UpstreamError:
            raise ProxyError(502, reason="Could not connect to the app") from None
