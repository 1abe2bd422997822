"""Half-close checks for a forward (tests/remote): an app on loopback and the two ways
one side can shut down only its write direction (``shutdown(SHUT_WR)``)."""

from __future__ import annotations

import asyncio

import pytest


class HalfCloseApp:
    """A TCP app on 127.0.0.1 for half-close checks. Each connection: in ``"reply"`` mode
    it reads until EOF, then answers ``got:<what it read>`` and closes; in ``"first"``
    mode it sends ``hello``, shuts its write side down, then reads until EOF and puts
    what it read in ``received``."""

    def __init__(self, mode: str):
        self.mode = mode
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "reply":
                data = await reader.read()
                writer.write(b"got:" + data)
                await writer.drain()
            else:
                writer.write(b"hello")
                await writer.drain()
                writer.write_eof()
                await self.received.put(await reader.read())
        except OSError:
            await self.received.put(b"<connection reset>")
        finally:
            writer.close()

    async def __aenter__(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()


async def client_half_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client sends, shuts its write side down; the app (``"reply"``) sees EOF and
    its answer still comes back."""
    writer.write(b"ping")
    await writer.drain()
    writer.write_eof()
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b"got:ping"
    except TimeoutError:
        raise AssertionError("the client shut its write side down, but no answer came back") from None


async def app_half_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: HalfCloseApp, send_after: bool) -> None:
    """The app (``"first"``) sends and shuts its write side down: the client sees the data
    and EOF (before it closed anything itself); with ``send_after``, what the client
    sends next still reaches the app."""
    try:
        got = await asyncio.wait_for(reader.read(), 10)
    except TimeoutError:
        raise AssertionError("the app shut its write side down, but the client saw no EOF") from None
    assert got == b"hello"
    if send_after:
        writer.write(b"still here")
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(app.received.get(), 10) == b"still here"


# OpenSSH's master opens a stdio forward's channel with "force drain" (as for ssh -W): on
# the server's EOF it also stops reading the passed socket, sends its own EOF and closes
# the channel (ssh -vv: "rcvd eof", "FORCE input drain", "send close"). Only a channel
# the master accepts itself (a forward it listens for) carries this direction's
# half-close, and that needs the hub to relay every byte (measured: well under ssh -L's
# throughput), so the tunnels keep the stdio forward.
APP_HALF_CLOSE_GAP = (
    "OpenSSH force-drains stdio-forward channels (MUX_C_NEW_STDIO_FWD): after the app's EOF the master "
    "stops reading the client and closes the channel"
)

HALF_CLOSES = [
    pytest.param("client", id="client-shuts-down-writing"),
    pytest.param("app", id="app-shuts-down-writing"),
    pytest.param(
        "app-then-client-sends", id="app-shuts-down-then-client-sends",
        marks=pytest.mark.xfail(reason=APP_HALF_CLOSE_GAP, strict=True, raises=(AssertionError, ConnectionError)),
    ),
]


async def check_half_close(open_client, how: str) -> None:
    """One half-close of HALF_CLOSES through a forward; ``open_client(host, port)``
    connects to the app through it and gives (reader, writer)."""
    app = HalfCloseApp("reply" if how == "client" else "first")
    async with app as (host, port):
        reader, writer = await open_client(host, port)
        try:
            if how == "client":
                await client_half_closes(reader, writer)
            else:
                await app_half_closes(reader, writer, app, send_after=how != "app")
        finally:
            writer.close()

