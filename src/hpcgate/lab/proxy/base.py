"""What HTTP and websocket proxying share: authentication, activity, the way to the app.

:class:`ProxyBase` is the base of :class:`~hpcgate.lab.proxy.handler.ProxyHandler`:
the Jupyter server's authentication and origin checks, plain-text error pages,
activity accounting, and the transport towards the app (connections, the request
head with its forwarded and overridden headers).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.log import log_request as jupyter_log_request
from tornado.websocket import WebSocketHandler

from ...appspec import render
from ..metrics import PORT_LABEL
from ..security import scrub_request_headers
from ..upstream import Connection, ForeignSocketError, Target, UpstreamError, encode_head, open_connection
from .errors import ProxyError

if TYPE_CHECKING:
    from ..apps.manager import ManagedApp
    from ..context import LabContext

ACTIVITY_EVERY = 1.0  # seconds between activity updates of one stream, one app, the proxy/<port> routes
_NEVER = float("-inf")
#: Host header values whose check_host acceptance a lab remembers (ProxyBase._host_allowed)
HOSTS_REMEMBERED = 64
#: Headers telling an app its mount point: set by the proxy only, never passed from the browser.
CONTEXT_HEADERS = frozenset({"x-forwarded-context", "x-proxycontextpath", "x-forwarded-prefix"})


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


class ProxyBase(WebSocketHandler, JupyterHandler):
    """Proxies one request (HTTP or websocket) to one app: the shared part."""

    def initialize(self, lab: LabContext, mode: str, app: str | None = None) -> None:  # type: ignore[override]
        # mode: "strip" (proxy/<port>), "absolute" (proxy/absolute/<port>) or "app"
        self.lab = lab
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
        self._bytes_in: Callable[[float], None] = _no_count
        self._bytes_out: Callable[[float], None] = _no_count

    def _count_request(self) -> None:
        """One more request to this request's app (hpcgate.lab.metrics); its bytes from now on."""
        label = self.app.spec.name if self.app is not None else PORT_LABEL
        count, self._bytes_in, self._bytes_out = self.lab.metrics.app_counters(label)
        count()

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
        proxied success that nobody would see, only the Prometheus metrics are recorded;
        everything else (errors, a deployment's own ``log_function``, DEBUG logging on)
        goes the usual way.
        """
        status = self.get_status()
        log_function = self.settings.get("log_function")
        if (
            (status < 300 or status == 304)
            and isinstance(log_function, functools.partial)
            and log_function.func is jupyter_log_request
            and not log_function.args
            and set(log_function.keywords) <= {"record_prometheus_metrics"}
            and not _shows_debug(self.log)
        ):
            # the Jupyter server's own setting: partial(log_request, record_prometheus_metrics=...);
            # recorded as its prometheus_log_method does (same histogram, same labels)
            if log_function.keywords.get("record_prometheus_metrics", True):
                self.lab.metrics.observe_request_duration(
                    f"{type(self).__module__}.{type(self).__name__}", self.request.method or "", status,
                    self.request.request_time(),
                )
            return
        super()._log()

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
        host = self.request.host
        known = self.lab.allowed_hosts
        if host in known:
            return True
        if not self.check_host():
            return False
        if "%" not in host and "/" not in host and len(known) < HOSTS_REMEMBERED:
            known.add(host)
        return True

    def _is_websocket(self) -> bool:
        if self._websocket is None:
            self._websocket = self.request.headers.get("Upgrade", "").lower() == "websocket"
        return self._websocket

    # ---------------------------------------------------------------- activity

    def _touch(self) -> None:
        """Count this request as user activity unless the app's spec excludes it.

        At most once per ``ACTIVITY_EVERY`` per handler (long streams), and for apps
        whose activity is counted unconditionally (the default) at most once per
        ``ACTIVITY_EVERY`` per app: the idle culler reads minutes, not milliseconds.
        A callable ``update_last_activity`` is still asked on every new request.
        """
        now = time.monotonic()
        if now - self._last_touch < ACTIVITY_EVERY:
            return
        self._last_touch = now
        app = self.app
        marks = self.lab.activity_marks
        if app is not None:
            spec = app.spec
            ula = spec.update_last_activity
            if callable(ula):
                # jupyter-server-proxy passes the request handler (``request.get_argument``...)
                if not ula(self):
                    return
            elif not ula or any(p.match(self.request.path) for p in spec.exclude_last_activity_patterns):
                return
            elif now - marks.get(spec.name, _NEVER) < ACTIVITY_EVERY:
                return
            marks[spec.name] = now
            app.touch()
        elif now - marks.get(None, _NEVER) < ACTIVITY_EVERY:
            return
        else:
            marks[None] = now
        self.lab.record_activity()

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

    def _request_head(self, chunked: bool) -> bytes:
        headers = self._scrubbed_headers()
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        headers += self._forwarded_headers()
        headers = self._override_headers(headers)
        return encode_head(self.request.method or "GET", self.upstream_path, headers)

    def _scrubbed_headers(self) -> list[tuple[str, str]]:
        """The browser's headers without credentials, hop-by-hop headers or a claimed context path."""
        headers = scrub_request_headers(self.request.headers.get_all(), self.lab.cookie_patterns)
        return [(k, v) for k, v in headers if k.lower() not in CONTEXT_HEADERS]

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        """X-Forwarded-For/-Proto/-Host, and where the app is mounted unless it sees full paths.

        The path prefix goes as ``X-Forwarded-Prefix`` (werkzeug, Spring...),
        ``X-Forwarded-Context`` and ``X-ProxyContextPath``, as jupyter-server-proxy sends it.
        """
        prior = self.request.headers.get("X-Forwarded-For")
        client = self.request.remote_ip or ""
        headers = [
            ("X-Forwarded-For", f"{prior}, {client}" if prior else client),
            ("X-Forwarded-Proto", self.request.headers.get("X-Forwarded-Proto", self.request.protocol)),
            ("X-Forwarded-Host", self.request.headers.get("X-Forwarded-Host", self.request.host)),
        ]
        if self.prefix and self._strips_prefix():
            headers += [("X-Forwarded-Context", self.prefix), ("X-Proxycontextpath", self.prefix), ("X-Forwarded-Prefix", self.prefix)]
        return headers

    def _strips_prefix(self) -> bool:
        """Whether the app sees paths without its prefix (``proxy/<port>``, apps without ``absolute_url``)."""
        if self.app is not None:
            return not self.app.spec.absolute_url
        return self.mode != "absolute"

    def _override_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.app is None or not self.app.spec.request_headers_override:
            return headers
        override = render(self.app.spec.request_headers_override, self.app.template_args())
        names = {k.lower() for k in override}
        return [(k, v) for k, v in headers if k.lower() not in names] + [(str(k), str(v)) for k, v in override.items()]


def _no_count(amount: float) -> None:
    """Before the request's app is known nothing is counted."""
