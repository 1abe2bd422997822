"""The websocket relay: one upgraded connection's bytes, verbatim, browser <-> app.

:class:`FrameRelay` takes over both sockets once the app and then the browser got their
101 (see ``WebSocketProxy._open_websocket`` in :mod:`hpcgate.lab.proxy.websocket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

from .wsframes import CLOSE_TOO_BIG, FrameScanner, MessageTooBig, close_frame

if TYPE_CHECKING:
    from ..upstream import Connection

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024  # largest read from a TLS browser stream (asyncio reads as much)
WS_LINGER = 5.0  # seconds to let a refused websocket's sender see the close frame


class FrameRelay:
    """Relays one websocket's bytes verbatim between the browser and the app.

    Contracts:

    * Frames pass unchanged both ways: the browser's masked frames go to the app as
      they are (the mask key travels in each header), the app's to the browser. Text,
      binary, fragments, ping/pong, close codes and negotiated extensions are the
      endpoints' business.
    * Each direction's frame headers are followed (:class:`wsframes.FrameScanner`): a
      message over ``limit`` gets both sides a close frame 1009 (where their stream is
      at a frame boundary; otherwise their connection is just closed).
    * Backpressure: a side whose outgoing buffer is full stops reading from the other
      side (asyncio flow control), so at most about one buffer per direction is held.
    * When either side closes or fails, both are closed; :meth:`run` returns then.

    Both sockets become asyncio transports with callback protocols: data is forwarded
    in the read callback itself, without a task switch (that is where latency goes).
    A TLS browser connection cannot be taken from tornado; it stays an IOStream
    behind :class:`_IOStreamTransport`.
    """

    def __init__(
        self,
        limit: int,
        touch: Callable[[], None],
        count_in: Callable[[int], object] | None = None,
        count_out: Callable[[int], object] | None = None,
    ):
        """``count_in``/``count_out``: called with the bytes relayed browser to app / app to browser."""
        self.touch = touch
        self.browser = _RelaySide(self, FrameScanner(limit), masks=False, count=count_in)
        self.app = _RelaySide(self, FrameScanner(limit), masks=True, count=count_out)
        self.browser.peer, self.app.peer = self.app, self.browser
        self.refusing = False
        self.done = asyncio.get_running_loop().create_future()

    async def run(self, stream: IOStream, conn: Connection) -> None:
        """Take over the browser's ``stream`` and the app's ``conn`` until both are closed."""
        loop = asyncio.get_running_loop()
        # Bytes already read past the HTTP heads, in tornado's and asyncio's buffers.
        early = stream._read_buffer_size and await stream.read_bytes(stream._read_buffer_size)
        app_early = bytes(conn.reader._buffer)
        conn.reader._buffer.clear()
        app_transport = conn.writer.transport
        app_transport.pause_reading()  # until the browser side is in place
        app_transport.set_protocol(self.app)
        self.app.connection_made(app_transport)
        if early:
            self.browser.data_received(early)
        if type(stream) is IOStream:
            IOLoop.current().remove_handler(stream.socket)  # the socket changes hands
            await loop.connect_accepted_socket(lambda: self.browser, stream.socket)
        else:
            self.browser.connection_made(_IOStreamTransport(stream, self.browser))
        if app_early:
            self.app.data_received(app_early)
        if conn.reader.at_eof():
            self.shutdown()
        app_transport.resume_reading()
        try:
            await self.done
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Close both sides (queued bytes are still sent) and end :meth:`run`."""
        for side in (self.browser, self.app):
            if side.transport is not None:
                side.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def refuse(self, sender: _RelaySide, exc: MessageTooBig, data: bytes) -> None:
        """A message over the limit: 1009 to both sides, after the frames before it."""
        log.info("hpcgate.lab: websocket message of %d+ bytes refused (1009)", exc.size)
        self.refusing = True
        receiver = sender.peer
        if exc.offset >= 0:  # else the receiver has part of the oversized header: just cut
            receiver.send(data[: exc.offset] + close_frame(CLOSE_TOO_BIG, masked=receiver.masks))
        if receiver.transport is not None:
            receiver.transport.close()
        if receiver.scanner.at_boundary:  # the sender's incoming stream
            sender.send(close_frame(CLOSE_TOO_BIG, masked=sender.masks))
        # Keep reading (and dropping) from the sender until it closes: closing a socket
        # with unread data resets it, and the reset can destroy the close frame.
        sender.discard = True
        asyncio.get_running_loop().call_later(WS_LINGER, self.shutdown)


class _RelaySide(asyncio.Protocol):
    """One socket of a :class:`FrameRelay`: what it receives goes to ``peer``."""

    def __init__(
        self, relay: FrameRelay, scanner: FrameScanner, masks: bool, count: Callable[[int], object] | None = None
    ):
        self.relay = relay
        self.count = count  # called with the bytes this side receives and passes on
        self.scanner = scanner  # follows the frames this side receives
        self.masks = masks  # frames towards this side must be masked (it is the app)
        self.peer: _RelaySide
        self.transport: Any = None
        self.discard = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        try:
            self.scanner.feed(data)
        except MessageTooBig as exc:
            self.relay.refuse(self, exc, data)
            return
        self.peer.send(data)
        if self.count is not None:
            self.count(len(data))
        self.relay.touch()

    def eof_received(self) -> bool:
        self.relay.shutdown()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self.relay.refusing and not self.discard):  # the refused sender decides
            self.relay.shutdown()

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()  # our buffer is full: stop reading theirs

    def resume_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _IOStreamTransport:
    """The transport calls :class:`_RelaySide` makes, over a tornado IOStream (TLS)."""

    def __init__(self, stream: IOStream, protocol: _RelaySide):
        self.stream = stream
        self.protocol = protocol
        self.reading = asyncio.Event()
        self.reading.set()
        self.paused_writing = False
        stream.set_close_callback(lambda: protocol.connection_lost(None))
        self._pump = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(StreamClosedError):
            while True:
                await self.reading.wait()
                self.protocol.data_received(await self.stream.read_bytes(READ_CHUNK, partial=True))

    def write(self, data: bytes) -> None:
        written = self.stream.write(data)
        if self.stream.writing() and not self.paused_writing:
            self.paused_writing = True
            self.protocol.pause_writing()
            written.add_done_callback(self._drained)

    def _drained(self, fut: asyncio.Future[None]) -> None:
        self.paused_writing = False
        if fut.exception() is None:
            self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def is_closing(self) -> bool:
        return self.stream.closed()

    def close(self) -> None:
        self._pump.cancel()
        if self.stream.closed():
            return
        if self.stream.writing():  # send what is queued first
            self.stream.write(b"").add_done_callback(lambda f: self.stream.close())
        else:
            self.stream.close()
