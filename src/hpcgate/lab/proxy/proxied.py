"""What proxying one request needs besides tornado's handler machinery.

:class:`ProxiedRequest` is shared by the proxy's tornado handler
(:class:`~hpcgate.lab.proxy.handler.ProxyHandler`, through :mod:`.base`) and the lean
answers below it (:mod:`.lean`), so that both send the app the same request head,
count the same activity and metrics, and give the browser the same response headers.

It relies on these attributes of the object it is mixed into: ``request`` (tornado's
``HTTPServerRequest``), ``lab``, ``app``, ``mode``, ``prefix``, ``upstream_path``,
``target``, ``_last_touch``, ``_bytes_in``/``_bytes_out``, and for
:meth:`_apply_headers` tornado's ``set_status``/``clear_header``/``add_header``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ...appspec import render
from ..metrics import PORT_LABEL
from ..security import drop_hop_by_hop, scrub_request_headers
from ..upstream import Target, UpstreamResponse, encode_head

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

    from ..apps.manager import ManagedApp
    from ..context import LabContext

ACTIVITY_EVERY = 1.0  # seconds between activity updates of one stream, one app, the proxy/<port> routes
_NEVER = float("-inf")
#: Headers telling an app its mount point: set by the proxy only, never passed from the browser.
CONTEXT_HEADERS = frozenset({"x-forwarded-context", "x-proxycontextpath", "x-forwarded-prefix"})
#: Headers of the server's own defaults that an app's response replaces (or goes without)
REPLACED_DEFAULTS = ("Content-Type", "Server", "Date", "Content-Security-Policy")


@dataclass
class Handover:
    """What a lean answer (:mod:`.lean`) leaves to the regular handler.

    ``response``: the app's answer, read up to its head, for the handler to send on
    (the handler closes it if it ends without doing so). None: the lean answer's
    attempt on a pooled connection failed and only a fresh connection is left to try,
    as after the handler's own first attempt.
    """

    response: UpstreamResponse | None = None


def no_count(amount: float) -> None:
    """Before the request's app is known nothing is counted."""


class ProxiedRequest:
    """The request head towards the app, activity, counters and the response's headers."""

    request: HTTPServerRequest
    lab: LabContext
    app: ManagedApp | None
    mode: str
    prefix: str
    upstream_path: str
    target: Target | None
    _last_touch: float
    _bytes_in: Callable[[float], None]
    _bytes_out: Callable[[float], None]

    def _count_request(self) -> None:
        """One more request to this request's app (hpcgate.lab.metrics); its bytes from now on."""
        label = self.app.spec.name if self.app is not None else PORT_LABEL
        count, self._bytes_in, self._bytes_out = self.lab.metrics.app_counters(label)
        count()

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

    # ---------------------------------------------------------------- request head

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

    # ---------------------------------------------------------------- response head

    def _apply_headers(self, resp: UpstreamResponse) -> None:
        """The app's status and headers on this response: the server's own Content-Type,
        Server, Date and CSP give way, hop-by-hop headers stay behind, Location and
        cookie paths get the prefix where the app does not see it."""
        self.set_status(resp.status, resp.reason or None)  # type: ignore[attr-defined]
        for name in REPLACED_DEFAULTS:
            self.clear_header(name)  # type: ignore[attr-defined]
        rewrite = self._strips_prefix()
        for name, value in drop_hop_by_hop(resp.headers):
            lower = name.lower()
            if lower == "content-length" and resp.framing not in ("length", "none"):
                continue
            if rewrite and lower == "location":
                value = self._rewrite_location(value)
            elif rewrite and lower == "set-cookie":
                value = self._rewrite_cookie_path(value)
            self.add_header(name, value)  # type: ignore[attr-defined]

    def _rewrite_location(self, value: str) -> str:
        if value.startswith("/") and not value.startswith("//"):
            return self.prefix + value
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and self.target is not None and not self.target.unix_socket:
            if parts.hostname in (self.target.host, "localhost", "127.0.0.1", "::1") and parts.port == self.target.port:
                return self.prefix + (parts.path or "/") + ("?" + parts.query if parts.query else "") + ("#" + parts.fragment if parts.fragment else "")
        return value

    _COOKIE_PATH = re.compile(r"(;\s*path=)(/[^;]*)", re.IGNORECASE)

    def _rewrite_cookie_path(self, value: str) -> str:
        return self._COOKIE_PATH.sub(lambda m: m.group(1) + self.prefix + m.group(2), value)


__all__ = ["ACTIVITY_EVERY", "CONTEXT_HEADERS", "REPLACED_DEFAULTS", "Handover", "ProxiedRequest", "no_count"]


