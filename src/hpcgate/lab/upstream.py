"""A small HTTP/1.1 client for talking to apps, built for streaming.

Why not tornado's ``AsyncHTTPClient``: its ``streaming_callback`` cannot push back, so a
slow browser makes the server buffer the whole download. Here every body chunk is
pulled by the caller (:meth:`UpstreamResponse.chunks`), so a reader that stops pulling
stops the app through TCP flow control.

Contracts:

* :class:`Target` names one backend: a TCP ``host:port`` or a unix socket path.
* :class:`ConnectionPool` keeps idle keep-alive connections per target and checks,
  on every new connection, that the socket belongs to our own Unix user.
* A response is framed by ``Content-Length``, ``chunked`` or connection close; only a
  fully read, framed response with keep-alive returns its connection to the pool.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .security import tcp_peer_uid, unix_peer_uid

READ_LIMIT = 1 << 20  # StreamReader buffer: one chunk in flight per direction
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Target:
    """One backend address: ``unix_socket`` if set, else ``host``/``port``."""

    host: str = "localhost"
    port: int = 0
    unix_socket: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"


class UpstreamError(Exception):
    """The app could not be reached or spoke broken HTTP; maps to 502."""


class ForeignSocketError(UpstreamError):
    """The socket at the target belongs to another Unix user; maps to 403."""


class Connection:
    """One open connection to a target."""

    def __init__(self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.target = target
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    @property
    def sock(self) -> socket.socket:
        return self.writer.get_extra_info("socket")

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader._buffer)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


async def open_connection(target: Target, check_owner: bool, timeout: float = 30.0) -> Connection:
    """Connect to ``target``; with ``check_owner`` refuse sockets of another Unix user."""
    try:
        async with asyncio.timeout(timeout):
            if target.unix_socket:
                reader, writer = await asyncio.open_unix_connection(target.unix_socket, limit=READ_LIMIT)
            else:
                reader, writer = await asyncio.open_connection(target.host, target.port, limit=READ_LIMIT)
    except (OSError, TimeoutError) as exc:
        raise UpstreamError(f"cannot connect to {target}: {exc.__class__.__name__}") from exc
    conn = Connection(target, reader, writer)
    sock = conn.sock
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if check_owner:
        uid = unix_peer_uid(sock) if sock.family == socket.AF_UNIX else tcp_peer_uid(sock)
        if uid is not None and uid != os.getuid():
            conn.close()
            raise ForeignSocketError(f"{target} belongs to another user")
    return conn


class ConnectionPool:
    """Idle keep-alive connections per target, at most ``max_idle`` each."""

    def __init__(self, check_owner: bool = True, max_idle: int = 16, idle_timeout: float = 30.0):
        self.check_owner = check_owner
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Target, list[Connection]] = {}

    async def acquire(self, target: Target, reuse: bool = True) -> tuple[Connection, bool]:
        """A connection to ``target`` and whether it was reused from the pool."""
        if reuse:
            idle = self._idle.get(target, [])
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if conn.usable() and now - conn.idle_since < self.idle_timeout:
                    return conn, True
                conn.close()
        return await open_connection(target, self.check_owner), False

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.target, [])
        if conn.usable() and len(idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def encode_head(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    """Request line and header block; refuses CR/LF in any value."""
    lines = [f"{method} {path} HTTP/1.1"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class UpstreamResponse:
    """Status and headers of an app's response; the body is pulled with :meth:`chunks`."""

    def __init__(self, conn: Connection, method: str, status: int, reason: str, headers: list[tuple[str, str]], version: str):
        self.conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.complete = False
        values = {}
        for k, v in headers:
            values.setdefault(k.lower(), []).append(v)
        connection = {t.strip().lower() for v in values.get("connection", []) for t in v.split(",")}
        self.keep_alive = version == "HTTP/1.1" and "close" not in connection
        te = ",".join(values.get("transfer-encoding", [])).lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self.framing, self.length = "none", 0
        elif "chunked" in te:
            self.framing, self.length = "chunked", None
        elif "content-length" in values:
            lengths = {v.strip() for v in values["content-length"]}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise UpstreamError("app sent an invalid Content-Length")
            self.framing, self.length = "length", int(lengths.pop())
        else:
            self.framing, self.length = "close", None
            self.keep_alive = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Yield body pieces of at most ``size`` bytes as they arrive."""
        reader = self.conn.reader
        try:
            if self.framing == "length":
                async for data in _read_exactly(reader, self.length or 0, size):
                    yield data
            elif self.framing == "chunked":
                while True:
                    line = await reader.readuntil(b"\r\n")
                    chunk_len = int(line.split(b";", 1)[0].strip() or b"x", 16)
                    if chunk_len == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers are hop-by-hop for us: dropped
                        break
                    async for data in _read_exactly(reader, chunk_len, size):
                        yield data
                    if await reader.readexactly(2) != b"\r\n":
                        raise UpstreamError("bad chunk framing from app")
            elif self.framing == "close":
                while data := await reader.read(size):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            raise UpstreamError(f"broken response body: {exc.__class__.__name__}") from exc
        self.complete = True

    async def read_all(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes."""
        if self.framing == "length":  # one read, no per-chunk generator steps
            if (self.length or 0) > limit:
                raise UpstreamError("response too large to rewrite")
            try:
                body = await self.conn.reader.readexactly(self.length or 0)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise UpstreamError(f"broken response body: {exc.__class__.__name__}") from exc
            self.complete = True
            return body
        body = bytearray()
        async for data in self.chunks():
            body += data
            if len(body) > limit:
                raise UpstreamError("response too large to rewrite")
        return bytes(body)


async def _read_exactly(reader: asyncio.StreamReader, count: int, size: int) -> AsyncIterator[bytes]:
    """Yield exactly ``count`` bytes in pieces of at most ``size``."""
    while count:
        data = await reader.read(min(size, count))
        if not data:
            raise UpstreamError("app closed the connection mid-body")
        count -= len(data)
        yield data


async def read_response_head(conn: Connection, method: str) -> UpstreamResponse:
    """Read status line and headers, skipping interim 1xx responses (except 101)."""
    while True:
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise UpstreamError("app closed the connection before responding") from exc
        except (asyncio.LimitOverrunError, ConnectionError) as exc:
            raise UpstreamError(f"bad response head: {exc.__class__.__name__}") from exc
        if len(head) > MAX_HEAD:
            raise UpstreamError("response head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamError("app did not answer with HTTP/1.x")
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t" or ":" not in line:
                raise UpstreamError("malformed header from app")
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
        if 100 <= status < 200 and status != 101:
            continue
        return UpstreamResponse(conn, method, status, parts[2] if len(parts) > 2 else "", headers, parts[0])


class ChunkedWriter:
    """Writes a request body to the app, chunk-encoded when its length is unknown."""

    def __init__(self, conn: Connection, chunked: bool):
        self.conn = conn
        self.chunked = chunked
        self.failed = False

    async def write(self, data: bytes) -> None:
        """Send ``data`` and wait until the socket buffer drains (backpressure)."""
        if self.failed or not data:
            return
        w = self.conn.writer
        try:
            if self.chunked:
                w.write(b"%x\r\n" % len(data))
                w.write(data)
                w.write(b"\r\n")
            else:
                w.write(data)
            await w.drain()
        except ConnectionError:
            # The app stopped reading (it may already have answered, e.g. 413):
            # drop the rest of the body and let the caller read the response.
            self.failed = True

    async def end(self) -> None:
        if self.chunked and not self.failed:
            try:
                self.conn.writer.write(b"0\r\n\r\n")
                await self.conn.writer.drain()
            except ConnectionError:
                self.failed = True
