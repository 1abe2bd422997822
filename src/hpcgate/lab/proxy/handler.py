"""The streaming HTTP and WebSocket proxy handlers.

Routes (all under the server's ``base_url``):

``proxy/<port>/...``            to ``localhost:<port>``, prefix stripped
``proxy/absolute/<port>/...``   to ``localhost:<port>``, full path kept
``proxy/<host>:<port>/...``     to an allowlisted host (also with ``absolute/``)
``<app>/...``                   to a named app, started on first request

Contracts:

* Nothing reaches an app before the request is authenticated by the Jupyter server
  (websocket upgrades included); state-changing requests authenticated by cookie
  must come from the server's own origin.
* Bodies stream both ways: at most a couple of chunks are held per request, a slow
  reader slows the writer (awaited ``flush``/``drain``).
* Websockets: the app's handshake comes first (the browser's 101 carries its answer),
  then frames are relayed verbatim both ways, at most one chunk held per direction
  (:class:`_FrameRelay`); only ``raw_socket_proxy`` apps get tornado's framing.
* Response headers are sent as soon as the app sends them (SSE, long polls).
* Error pages are plain text and never contain the requested host or path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

from ..apps.manager import AppStartError, ManagedApp
from ..security import HostNotAllowed, drop_hop_by_hop, parse_host, scrub_request_headers, strip_token_query
from ..upstream import (
    ChunkedWriter,
    Connection,
    ForeignSocketError,
    Target,
    UpstreamError,
    UpstreamResponse,
    encode_head,
    open_connection,
    read_response_head,
)
from . import splice
from .wsrelay import FrameRelay

if TYPE_CHECKING:
    from ..extension import LabContext

log = logging.getLogger(__name__)

BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
SMALL_BODY = 64 * 1024
ACTIVITY_EVERY = 1.0  # seconds between activity updates during one long stream
WS_HANDSHAKE_TIMEOUT = 60.0  # seconds for the app's answer to a websocket upgrade


class ProxyError(web.HTTPError):
    """An error answered with a fixed, plain-text message."""


@web.stream_request_body
class ProxyHandler(WebSocketHandler, JupyterHandler):
    """Proxies one request (HTTP or websocket) to one app. See the module docstring."""

    def initialize(self, lab: LabContext, mode: str, app: str | None = None) -> None:  # type: ignore[override]
        # mode: "strip" (proxy/<port>), "absolute" (proxy/absolute/<port>) or "app"
        self.lab = lab
        self.mode = mode
        self.app: ManagedApp | None = lab.manager.get(app) if app else None
        self.target: Target | None = None
        self.prefix = ""  # path prefix the browser sees for this app, no trailing slash
        self.upstream_path = "/"
        self.conn: Connection | None = None
        self.body_writer: ChunkedWriter | None = None
        self.ws_conn: Connection | None = None  # the app's side of a relayed websocket
        self.raw_conn: Connection | None = None
        self._pump: asyncio.Task[None] | None = None
        self._last_touch = 0.0
        self._client_gone = False

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

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Plain text, fixed messages: nothing from the URL is ever reflected.
        self.clear_header("Content-Security-Policy")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        # An error raised before the body was read ends the connection: say so, so
        # clients do not reuse it.
        self.set_header("Connection", "close")
        self.finish(f"{status_code} {self._reason}\n")

    def _early_redirect(self, url: str) -> None:
        # Answered in prepare(), before tornado read the (streamed) body: the
        # connection ends afterwards, so tell the client not to reuse it.
        self.set_header("Connection", "close")
        self.redirect(url)

    def _is_websocket(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    async def prepare(self) -> None:  # type: ignore[override]
        await JupyterHandler.prepare(self)
        if self._finished:
            return
        if self.current_user is None:
            # Every request and every websocket upgrade needs the server's authentication.
            if self.request.method in ("GET", "HEAD") and not self._is_websocket():
                url = self.get_login_url()
                sep = "&" if "?" in url else "?"
                from urllib.parse import quote

                self._early_redirect(url + sep + "next=" + quote(self.request.uri or "/", safe=""))
                return
            raise ProxyError(403, reason="Authentication required")
        with contextlib.suppress(AttributeError):
            self.request.connection.set_max_body_size(self.lab.max_body_size)  # type: ignore[union-attr]
        self._resolve_target()
        if self._finished:
            return
        if self.app is not None:
            try:
                await self.app.ensure_running()
            except AppStartError:
                raise ProxyError(503, reason="App failed to start; see its log in the hpcgate API") from None
            self.target = self.app.target
        self._touch()
        if self._is_websocket():
            return
        if self._static():
            return  # answered in get()/head(), after tornado has read the request
        if self.app is not None and self.app.spec.raw_socket_proxy:
            raise ProxyError(405, reason="This app only accepts websocket connections")
        if self._has_body():
            # Open the app connection now so data_received can stream into it.
            self.conn = await self._connect(reuse=False)
            chunked = self.request.headers.get("Content-Length") is None
            head = self._request_head(chunked)
            self.conn.writer.write(head)
            self.body_writer = ChunkedWriter(self.conn, chunked)

    def _static(self) -> bool:
        return self.app is not None and bool(self.app.spec.static_files) and not self._is_websocket()

    def _serve_static(self) -> None:
        """Answer from the spec's ``static_files`` (websockets still reach the app)."""
        assert self.app is not None
        from ..apps.static import NotFound, index_url, static_file

        static = self.app.spec.static_files
        if self.request.method not in ("GET", "HEAD"):
            raise ProxyError(405, reason="Method not allowed")
        rest = self.request.path[len(self.prefix) :]
        if rest in ("", "/") and static.get("index"):
            self.redirect(index_url(self.prefix, static["index"]))
            return
        try:
            body, ctype = static_file(static["dir"], rest or "/")
        except NotFound:
            raise ProxyError(404, reason="Not found") from None
        self.set_header("Content-Type", ctype)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(body if self.request.method == "GET" else b"")

    def _has_body(self) -> bool:
        h = self.request.headers
        if "chunked" in h.get("Transfer-Encoding", "").lower():
            return True
        return int(h.get("Content-Length", "0") or 0) > 0

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        # Awaited by tornado before it reads more of the upload: backpressure.
        if self.body_writer is not None:
            await self.body_writer.write(chunk)

    # ---------------------------------------------------------------- routing

    def _resolve_target(self) -> None:
        """Work out ``target``, ``prefix`` and ``upstream_path`` from the raw path."""
        raw_path = self.request.path  # still percent-encoded, as the client sent it
        query = strip_token_query(self.request.query)
        base = self.lab.base_url
        if self.mode == "app":
            assert self.app is not None
            self.prefix = base + self.app.spec.name
            rest = raw_path[len(self.prefix) :]
        else:
            start = base + ("proxy/absolute/" if self.mode == "absolute" else "proxy/")
            hostport, slash, rest = raw_path[len(start) :].partition("/")
            rest = slash + rest
            self.prefix = start + hostport
            self.target = self._parse_hostport(hostport)
        if not rest:
            if self.request.method in ("GET", "HEAD") and not self._is_websocket():
                self._early_redirect(self.prefix + "/" + ("?" + self.request.query if self.request.query else ""))
                return
            rest = "/"
        if self.mode == "absolute" or (self.app is not None and self.app.spec.absolute_url):
            path = raw_path
        else:
            path = rest
        if self.app is not None:
            path = self.app.spec.map_path(path)
        self.upstream_path = path + ("?" + query if query else "")

    def _parse_hostport(self, hostport: str) -> Target:
        # Clients percent-encode IPv6 brackets; no other escape is accepted in a host.
        hostport = re.sub("%5[bB]", "[", re.sub("%5[dD]", "]", hostport))
        if hostport.isdigit():
            host, port_text = "localhost", hostport
        else:
            host_raw, sep, port_text = hostport.rpartition(":")
            if not sep or not port_text.isdigit():
                raise ProxyError(400, reason="Bad proxy address")
            try:
                host = parse_host(host_raw)
            except HostNotAllowed:
                raise ProxyError(400, reason="Bad host") from None
            if not self.lab.allowlist.allows(host, self):
                raise ProxyError(403, reason="Host not allowed")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ProxyError(400, reason="Bad port")
        if not self.lab.port_allowed(port, host):
            raise ProxyError(403, reason="Port not allowed")
        return Target(host=host, port=port)

    # ---------------------------------------------------------------- activity

    def _touch(self) -> None:
        """Count this request as user activity unless the app's spec excludes it."""
        now = time.monotonic()
        if now - self._last_touch < ACTIVITY_EVERY:
            return
        self._last_touch = now
        if self.app is not None:
            spec = self.app.spec
            ula = spec.update_last_activity
            if callable(ula):
                if not ula(self.request):
                    return
            elif not ula or any(p.search(self.request.path) for p in spec.exclude_last_activity_patterns):
                return
            self.app.touch()
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
        headers = scrub_request_headers(self.request.headers.get_all(), self.lab.cookie_patterns)
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        headers += self._forwarded_headers()
        headers = self._override_headers(headers)
        return encode_head(self.request.method or "GET", self.upstream_path, headers)

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        prior = self.request.headers.get("X-Forwarded-For")
        client = self.request.remote_ip or ""
        return [
            ("X-Forwarded-For", f"{prior}, {client}" if prior else client),
            ("X-Forwarded-Proto", self.request.headers.get("X-Forwarded-Proto", self.request.protocol)),
            ("X-Forwarded-Host", self.request.headers.get("X-Forwarded-Host", self.request.host)),
        ]

    def _override_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.app is None or not self.app.spec.request_headers_override:
            return headers
        from ...appspec import render

        override = render(self.app.spec.request_headers_override, self.app.template_args())
        names = {k.lower() for k in override}
        return [(k, v) for k, v in headers if k.lower() not in names] + [(str(k), str(v)) for k, v in override.items()]

    async def _exchange(self) -> UpstreamResponse:
        """Send the request (if not yet sent) and read the response head."""
        if self.body_writer is not None:
            assert self.conn is not None
            await self.body_writer.end()
            try:
                return await read_response_head(self.conn, self.request.method or "GET")
            except UpstreamError:
                self.conn.close()
                raise ProxyError(502, reason="The app did not answer") from None
        head = self._request_head(chunked=False)
        for attempt in (0, 1):
            # A pooled keep-alive connection may have been closed by the app meanwhile:
            # a request without body is safe to send again on a fresh connection.
            conn = await self._connect(reuse=attempt == 0)
            self.conn = conn
            try:
                conn.writer.write(head)
                return await read_response_head(conn, self.request.method or "GET")
            except (UpstreamError, ConnectionError):
                conn.close()
        raise ProxyError(502, reason="The app did not answer")

    # ---------------------------------------------------------------- HTTP

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

    async def _proxy_http(self) -> None:
        resp = await self._exchange()
        conn = resp.conn
        try:
            if self.app is not None and self.app.spec.rewrite_response:
                await self._send_rewritten(resp)
            else:
                await self._send_streaming(resp)
        except (StreamClosedError, UpstreamError, asyncio.CancelledError):
            conn.close()
            if not self._finished and not self._client_gone:
                # Headers may be out already: the only honest signal left is a cut connection.
                with contextlib.suppress(Exception):
                    self.request.connection.close()  # type: ignore[union-attr]
            return
        if resp.complete and resp.keep_alive and (self.body_writer is None or not self.body_writer.failed):
            self.lab.pool.release(conn)
        else:
            conn.close()

    def _apply_headers(self, resp: UpstreamResponse) -> None:
        self.set_status(resp.status, resp.reason or None)
        for name in ("Content-Type", "Server", "Date", "Content-Security-Policy"):
            self.clear_header(name)
        rewrite = self.mode == "strip" or (self.app is not None and not self.app.spec.absolute_url)
        for name, value in drop_hop_by_hop(resp.headers):
            lower = name.lower()
            if lower == "content-length" and resp.framing not in ("length", "none"):
                continue
            if rewrite and lower == "location":
                value = self._rewrite_location(value)
            elif rewrite and lower == "set-cookie":
                value = self._rewrite_cookie_path(value)
            self.add_header(name, value)

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

    async def _send_streaming(self, resp: UpstreamResponse) -> None:
        self._apply_headers(resp)
        if resp.framing == "none":
            await self.finish()
            resp.complete = True
            return
        if resp.framing == "length" and (resp.length or 0) <= SMALL_BODY:
            # Small, fixed-size body: one write with the headers.
            async for data in resp.chunks(SMALL_BODY):
                self.write(data)
            await self.finish()
            return
        await self.flush()  # headers now, before the body ends (SSE, long polls)
        if resp.framing == "length" and (resp.length or 0) >= self.lab.splice_min_size and await self._try_splice(resp):
            return
        pending: asyncio.Future[None] | None = None
        async for data in resp.chunks(self.lab.chunk_size):
            self.write(data)
            if pending is not None:
                await pending  # at most two chunks in flight towards the browser
            pending = self.flush()
            self._touch()
        if pending is not None:
            await pending
        await self.finish()

    async def _try_splice(self, resp: UpstreamResponse) -> bool:
        """Relay the rest of a fixed-length body in a worker thread; False if not possible here.

        Relies on tornado internals (the connection's ``stream`` and its count of
        outstanding Content-Length bytes); if those are not as expected, falls back.
        """
        http_conn = self.request.connection
        stream = getattr(http_conn, "stream", None)
        if (
            not splice.AVAILABLE
            or not hasattr(http_conn, "_expected_content_remaining")
            or type(stream) is not IOStream
            or stream.writing()
        ):
            return False
        reader = resp.conn.reader
        transport = resp.conn.writer.transport
        remaining = resp.length or 0
        # Bytes the event loop already read from the app go first, the ordinary way.
        buffered = len(reader._buffer)  # noqa: SLF001
        if buffered:
            data = await reader.read(min(buffered, remaining))
            self.write(data)
            await self.flush()
            remaining -= len(data)
        transport.pause_reading()
        cancelled = threading.Event()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, splice.relay, resp.conn.sock.fileno(), stream.socket.fileno(), remaining, cancelled
            )
        except splice.SpliceError as exc:
            raise UpstreamError(str(exc)) from None
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            transport.resume_reading()
        http_conn._expected_content_remaining = 0  # noqa: SLF001 -- we wrote them past tornado
        resp.complete = True
        self._touch()
        await self.finish()
        return True

    async def _send_rewritten(self, resp: UpstreamResponse) -> None:
        from ...appspec import call_with_named_args

        assert self.app is not None and self.target is not None
        body = await resp.read_all(self.lab.rewrite_body_limit)
        rewritable = RewritableResponse(resp, body)
        args = {
            "response": rewritable,
            "request": self.request,
            "orig_response": resp,
            "host": self.target.host if not self.target.unix_socket else "localhost",
            "port": self.target.port,
            "path": self.upstream_path,
        }
        for func in self.app.spec.rewrite_response:
            call_with_named_args(func, args)
        self.set_status(rewritable.code, rewritable.reason or None)
        for name in ("Content-Type", "Server", "Date", "Content-Security-Policy"):
            self.clear_header(name)
        for name, value in rewritable.headers.get_all():
            if name.lower() in ("content-length",) or name.lower() in ("transfer-encoding", "connection", "keep-alive"):
                continue
            self.add_header(name, value)
        if rewritable.body and rewritable.code not in (204, 304):
            self.write(rewritable.body)
        await self.finish()

    # ---------------------------------------------------------------- websockets

    @property
    def max_message_size(self) -> int:  # type: ignore[override]
        return self.lab.websocket_max_message_size  # raw_socket_proxy mode only

    def get_compression_options(self) -> dict[str, Any] | None:
        return None

    async def _open_websocket(self) -> None:
        """Connect to the app first, then finish the browser's handshake with its answer."""
        assert self.target is not None
        if self.app is not None and self.app.spec.raw_socket_proxy:
            self.raw_conn = await self._connect(reuse=False)
            await WebSocketHandler.get(self)
            return
        if not self._websocket_request_ok():
            return
        conn = await self._connect(reuse=False)  # refuses another user's socket before sending
        self.ws_conn = conn
        try:
            resp = await self._app_handshake(conn)
        except BaseException:
            conn.close()
            raise
        self.clear_header("Content-Type")
        self.set_status(101)
        self.set_header("Upgrade", "websocket")
        self.set_header("Connection", "Upgrade")
        for name in ("Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"):
            value = resp.header(name)
            if value:
                self.set_header(name, value)
        flushed = self.finish()
        stream = self.detach()
        try:
            await flushed  # the 101 is out before the socket changes hands
        except StreamClosedError:
            conn.close()  # the browser left meanwhile
            return
        stream.set_nodelay(True)  # after detach: finishing the request turned it off
        await FrameRelay(self.lab.websocket_max_message_size, self._touch).run(stream, conn)

    def _websocket_request_ok(self) -> bool:
        """tornado's checks of an upgrade request (its own ``get`` does them in raw mode)."""
        headers = self.request.headers
        if "upgrade" not in {t.strip().lower() for t in headers.get("Connection", "").split(",")}:
            raise ProxyError(400, reason='"Connection" must be "Upgrade"')
        # Browsers do not apply the same-origin policy to websockets: always checked.
        if not self.check_origin(headers.get("Origin")):
            raise ProxyError(403, reason="Cross origin websockets not allowed")
        if headers.get("Sec-WebSocket-Version") != "13":
            self.set_status(426, "Upgrade Required")
            self.set_header("Sec-WebSocket-Version", "13")
            self.finish()
            return False
        if not headers.get("Sec-WebSocket-Key") or not headers.get("Host"):
            raise ProxyError(400, reason="Missing/Invalid WebSocket headers")
        return True

    async def _app_handshake(self, conn: Connection) -> UpstreamResponse:
        """Send the browser's upgrade (scrubbed) to the app; its 101 or a 502.

        The browser's Sec-WebSocket-Key/-Version/-Protocol/-Extensions go as they are,
        so the app's answer is valid for the browser unchanged.
        """
        scrubbed = scrub_request_headers(self.request.headers.get_all(), self.lab.cookie_patterns)
        headers = [("Host", self.request.host), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
        headers += [(k, v) for k, v in scrubbed if k.lower() != "host"]
        headers = self._override_headers(headers + self._forwarded_headers())
        try:
            conn.writer.write(encode_head("GET", self.upstream_path, headers))
            async with asyncio.timeout(WS_HANDSHAKE_TIMEOUT):
                resp = await read_response_head(conn, "GET")
        except (UpstreamError, ConnectionError, TimeoutError) as exc:
            self.log.warning("hpcgate.lab: websocket to %s failed: %r", self.target, exc)
            raise ProxyError(502, reason="The app refused the websocket") from None
        key = self.request.headers.get("Sec-WebSocket-Key", "")
        offered = {p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()}
        chosen = resp.header("Sec-WebSocket-Protocol")
        if (
            resp.status != 101
            or (resp.header("Upgrade") or "").lower() != "websocket"
            or resp.header("Sec-WebSocket-Accept") != WebSocketProtocol13.compute_accept_value(key)
            or (chosen is not None and chosen not in offered)
        ):
            self.log.warning("hpcgate.lab: websocket to %s refused by the app (HTTP %s)", self.target, resp.status)
            raise ProxyError(502, reason="The app refused the websocket")
        return resp

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Only raw_socket_proxy connections are tornado websockets here.
        self.set_nodelay(True)
        if self.raw_conn is not None:
            self._pump = asyncio.ensure_future(self._pump_raw())

    async def _pump_raw(self) -> None:
        conn = self.raw_conn
        assert conn is not None
        while data := await conn.reader.read(self.lab.chunk_size):
            try:
                await self.write_message(data, binary=True)
            except WebSocketClosedError:
                break
            self._touch()
        conn.close()
        self.close()

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:  # type: ignore[override]
        # A returned awaitable is awaited by tornado before it reads the next frame:
        # backpressure to the browser.
        self._touch()
        if self.raw_conn is not None:
            return self._write_raw(message)
        return None

    async def _write_raw(self, message: str | bytes) -> None:
        assert self.raw_conn is not None
        try:
            self.raw_conn.writer.write(message.encode() if isinstance(message, str) else message)
            await self.raw_conn.writer.drain()
        except ConnectionError:
            self.close()

    def on_close(self) -> None:
        self._client_gone = True
        if self.ws_conn is not None and not self._finished:
            self.ws_conn.close()  # browser left during the app's handshake
        if self.raw_conn is not None:
            self.raw_conn.close()
        if self.conn is not None and not self._finished:
            self.conn.close()  # browser left mid-download: free the app's connection


class RewritableResponse:
    """What ``rewrite_response`` callables may change: ``code``, ``reason``, ``headers``, ``body``."""

    def __init__(self, resp: UpstreamResponse, body: bytes):
        self.code = resp.status
        self.reason = resp.reason
        self.headers = HTTPHeaders()
        for k, v in drop_hop_by_hop(resp.headers):
            self.headers.add(k, v)
        self.body = body
        self.orig_response = resp


def proxy_handlers(lab: LabContext) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado routes for the proxy and every named app (patterns without base_url)."""
    handlers: list[tuple[str, type, dict[str, Any]]] = [
        (r"proxy/absolute/([^/]+)(/.*)?", ProxyHandler, {"lab": lab, "mode": "absolute"}),
        (r"proxy/([^/]+)(/.*)?", ProxyHandler, {"lab": lab, "mode": "strip"}),
    ]
    for name in lab.manager.apps:
        handlers.append((url_path_join(re.escape(name)) + r"(/.*)?", ProxyHandler, {"lab": lab, "mode": "app", "app": name}))
    return handlers
