"""Websocket proxying.

The app's handshake comes first (the browser's 101 carries its answer), then frames
are relayed verbatim both ways, at most one chunk held per direction
(:class:`~.wsrelay.FrameRelay`); only ``raw_socket_proxy`` apps get tornado's framing
(each message's bytes go to the app's socket as they are, and back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

from ..upstream import Connection, UpstreamError, UpstreamResponse, encode_head, read_response_head
from .base import ProxyBase
from .errors import ProxyError
from .wsrelay import FrameRelay

WS_HANDSHAKE_TIMEOUT = 60.0  # seconds for the app's answer to a websocket upgrade


class WebSocketProxy(ProxyBase):
    """The websocket side of :class:`~hpcgate.lab.proxy.handler.ProxyHandler`."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.ws_conn: Connection | None = None  # the app's side of a relayed websocket
        self.raw_conn: Connection | None = None  # the app's socket of a raw_socket_proxy app
        self._pump: asyncio.Task[None] | None = None

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
        await FrameRelay(
            self.lab.websocket_max_message_size, self._touch, count_in=self._bytes_in, count_out=self._bytes_out
        ).run(stream, conn)

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
        scrubbed = self._scrubbed_headers()
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

    # ------------------------------------------------------ raw_socket_proxy apps

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Only raw_socket_proxy connections are tornado websockets here.
        self.set_nodelay(True)
        if self.raw_conn is not None:
            self._pump = asyncio.ensure_future(self._pump_raw())

    async def _pump_raw(self) -> None:
        conn = self.raw_conn
        assert conn is not None
        while data := await conn.reader.read(self.lab.chunk_size):
            self._bytes_out(len(data))
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
        self._bytes_in(len(message))
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
