"""HTTP proxying: request bodies streamed to the app, responses streamed back.

Bodies stream both ways: at most a couple of chunks are held per request, a slow
reader slows the writer (awaited ``flush``/``drain``). Response headers are sent as
soon as the app sends them (SSE, long polls). Large fixed-length bodies are relayed
off the event loop (:mod:`.splice`); apps with ``rewrite_response`` get their
response read whole and passed to the callables (:class:`RewritableResponse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import threading
from collections.abc import Callable
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders, responses
from tornado.iostream import IOStream, StreamClosedError

from ...appspec import call_with_named_args
from ..apps.static import NotFound, index_url, static_file
from ..security import drop_hop_by_hop
from ..upstream import ChunkedWriter, UpstreamError, UpstreamResponse, read_response_head
from . import splice
from .base import ProxyBase
from .errors import ProxyError
from .proxied import REPLACED_DEFAULTS

SMALL_BODY = 64 * 1024


class RewritableResponse:
    """A response as ``rewrite_response`` callables see it (jupyter-server-proxy's contract).

    ``code``, ``reason``, ``headers`` (:class:`~tornado.httputil.HTTPHeaders`) and
    ``body`` (bytes) may be changed; changing ``code`` while ``reason`` is still the
    standard phrase of the old code sets the new code's phrase (403 -> "Forbidden").
    ``orig_response`` is the app's response as a :class:`tornado.httpclient.HTTPResponse`.
    Each callable gets a copy of the previous one's result (:meth:`apply_to_copy`).
    """

    def __init__(self, orig_response: HTTPResponse):
        self.orig_response = orig_response
        self._code = orig_response.code
        self.reason: str | None = orig_response.reason
        self.headers = copy.copy(orig_response.headers)
        self.body: bytes = orig_response.body

    @property
    def code(self) -> int:
        return self._code

    @code.setter
    def code(self, value: int) -> None:
        if self.reason == responses.get(self._code, "Unknown"):
            self.reason = responses.get(value, "Unknown")
        self._code = value

    def apply_to_copy(self, func: Callable[[RewritableResponse], Any]) -> RewritableResponse:
        """``func`` applied to a copy of this response (headers copied too); the copy."""
        new = copy.copy(self)
        new.headers = copy.copy(self.headers)
        func(new)
        return new

    @classmethod
    def from_upstream(cls, resp: UpstreamResponse, body: bytes, url: str) -> RewritableResponse:
        headers = HTTPHeaders()
        for k, v in drop_hop_by_hop(resp.headers):
            headers.add(k, v)
        orig = HTTPResponse(HTTPRequest(url), resp.status, headers=headers, buffer=io.BytesIO(body), reason=resp.reason or None)
        return cls(orig)


class HTTPProxy(ProxyBase):
    """The HTTP side of :class:`~hpcgate.lab.proxy.handler.ProxyHandler`."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.body_writer: ChunkedWriter | None = None  # the upload towards the app, if any

    # ---------------------------------------------------------------- request body

    def _has_body(self) -> bool:
        h = self.request.headers
        if "chunked" in h.get("Transfer-Encoding", "").lower():
            return True
        return int(h.get("Content-Length", "0") or 0) > 0

    async def _open_upload(self) -> None:
        """Open the app connection and send the head now, so data_received can stream into it."""
        self.conn = await self._connect(reuse=False)
        chunked = self.request.headers.get("Content-Length") is None
        head = self._request_head(chunked)
        self.conn.writer.write(head)
        self.body_writer = ChunkedWriter(self.conn, chunked)

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        # Awaited by tornado before it reads more of the upload: backpressure.
        if self.body_writer is not None:
            self._bytes_in(len(chunk))
            await self.body_writer.write(chunk)

    # ---------------------------------------------------------------- static files

    def _static(self) -> bool:
        return self.app is not None and bool(self.app.spec.static_files) and not self._is_websocket()

    def _serve_static(self) -> None:
        """Answer from the spec's ``static_files`` (websockets still reach the app)."""
        assert self.app is not None
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

    # ---------------------------------------------------------------- exchange

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
        handover = self.handover
        if handover is not None and handover.response is not None:
            # a lean answer (.lean) sent the request and read the app's head already
            resp, handover.response = handover.response, None
            self.conn = resp.conn
            return resp
        head = self._request_head(chunked=False)
        # after a lean answer's pooled attempt failed, only the fresh connection is left
        for attempt in (1,) if handover is not None else (0, 1):
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

    async def _proxy_http(self) -> None:
        resp = await self._exchange()
        conn = resp.conn
        try:
            if self._rewriters():
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

    # ---------------------------------------------------------------- response body

    async def _send_streaming(self, resp: UpstreamResponse) -> None:
        self._apply_headers(resp)
        if resp.framing == "none":
            await self.finish()
            resp.complete = True
            return
        if resp.framing == "length" and (resp.length or 0) <= SMALL_BODY:
            # Small, fixed-size body: one write with the headers.
            body = await resp.read_all(SMALL_BODY)
            self._bytes_out(len(body))
            self.write(body)
            await self.finish()
            return
        await self.flush()  # headers now, before the body ends (SSE, long polls)
        if resp.framing == "length" and (resp.length or 0) >= self.lab.splice_min_size and await self._try_splice(resp):
            return
        pending: asyncio.Future[None] | None = None
        async for data in resp.chunks(self.lab.chunk_size):
            self._bytes_out(len(data))
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
        buffered = len(reader._buffer)
        if buffered:
            data = await reader.read(min(buffered, remaining))
            self._bytes_out(len(data))
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
        http_conn._expected_content_remaining = 0
        self._bytes_out(remaining)
        resp.complete = True
        self._touch()
        await self.finish()
        return True

    def _rewriters(self) -> list[Callable[..., Any]]:
        """The app's ``rewrite_response`` callables, or for ``proxy/...`` the
        ``non_service_rewrite_response`` ones."""
        if self.app is not None:
            return self.app.spec.rewrite_response
        return self.lab.non_service_rewrite_response

    async def _send_rewritten(self, resp: UpstreamResponse) -> None:
        """Read the whole response, pass it through the rewriters, send the result.

        As jupyter-server-proxy does: each callable gets the arguments it names of
        ``response`` (a copy of the previous result), ``orig_response`` (the app's
        response, unchanged), ``request``, ``host``, ``port`` and ``path`` (the path
        sent to the app, without query).
        """
        assert self.target is not None
        body = await resp.read_all(self.lab.rewrite_body_limit)
        path, _, _ = self.upstream_path.partition("?")
        original = RewritableResponse.from_upstream(resp, body, "http://localhost" + self.upstream_path)
        named = self.app is not None or self.target.unix_socket
        args = {
            "orig_response": original,
            "request": self.request,
            "host": "localhost" if named else self.target.host,
            "port": self.target.port,
            "path": path,
        }
        rewritten = original
        for func in self._rewriters():
            rewritten = rewritten.apply_to_copy(lambda r, func=func: call_with_named_args(func, {"response": r, **args}))
        self.set_status(rewritten.code, rewritten.reason or None)
        for name in REPLACED_DEFAULTS:
            self.clear_header(name)
        rewrite_location = self._strips_prefix()
        for name, value in rewritten.headers.get_all():
            lower = name.lower()
            if lower in ("content-length", "transfer-encoding", "connection", "keep-alive"):
                continue
            if rewrite_location and lower == "location":
                value = self._rewrite_location(value)
            elif rewrite_location and lower == "set-cookie":
                value = self._rewrite_cookie_path(value)
            self.add_header(name, value)
        if rewritten.body and rewritten.code not in (204, 304):
            self._bytes_out(len(rewritten.body))
            self.write(rewritten.body)
        await self.finish()
