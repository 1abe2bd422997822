"""An isolated app's TCP port, offered outside its network namespace as a unix socket.

Run inside the app's namespace (``bwrap --unshare-net``) in front of the app::

    python -m hpcgate.lab.apps.bridge UNIX_SOCKET PORT -- COMMAND [ARG...]

It starts ``COMMAND`` as its child (same process group, same output), waits until
``127.0.0.1:PORT`` accepts connections, then listens on ``UNIX_SOCKET`` (mode 0600, in
the app's private 0700 directory) and relays every connection to that port. Programs
that can only listen on TCP (TensorBoard, MLflow) thereby become reachable for the lab
alone: the port exists only in the namespace, the socket only for the user.

Contracts: the socket appears only once the app listens, so a readiness check that
connects to it means the app is up. The bridge exits with the app's exit status
(128+N when a signal N ended it) and removes the socket; SIGTERM, SIGINT and SIGHUP
are passed on to the app (the lab's stop also signals the whole process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

CHUNK = 256 * 1024
PORT_POLL_INTERVAL = 0.1


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close; drain() keeps a slow side from growing buffers."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _relay(port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        app_r, app_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pump(client_r, app_w), _pump(app_r, client_w))
    finally:
        for w in (app_w, client_w):
            w.close()


async def _port_open(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


async def run(socket_path: str, port: int, argv: list[str]) -> int:
    """Run ``argv`` behind the bridge; its exit status, shell style."""
    child = await asyncio.create_subprocess_exec(*argv)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lambda s=sig: child.returncode is None and child.send_signal(s))
    exited = asyncio.ensure_future(child.wait())
    server = None
    try:
        while not exited.done() and not await _port_open(port):
            await asyncio.wait({exited}, timeout=PORT_POLL_INTERVAL)
        if not exited.done():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
            old = os.umask(0o177)  # the socket is born 0600: no window with a wider mode
            try:
                server = await asyncio.start_unix_server(lambda r, w: _relay(port, r, w), socket_path)
            finally:
                os.umask(old)
        code = await exited
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    return 128 - code if code < 0 else code


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    if len(args) < 4 or args[2] != "--" or not args[1].isdigit():
        print("usage: python -m hpcgate.lab.apps.bridge UNIX_SOCKET PORT -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    return asyncio.run(run(args[0], int(args[1]), args[3:]))


if __name__ == "__main__":
    sys.exit(main())
