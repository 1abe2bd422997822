"""A half-close-capable tunnel data path, kept only to measure it (``make bench
ARGS=halfclose``); hpcgate does not use it.

The OpenSSH master listens itself, on a Unix socket, as a local forward to
``host:port`` (``MUX_C_OPEN_FWD``, as ``ssh -O forward -L path:host:port``): its
channels are ordinary port-forward channels, which carry a half-close both ways as
``ssh -L`` does (the stdio forwards of the TunnelManager end the channel on the
server's EOF). The "hub" (this process) keeps the TCP port and relays each client to
that Unix socket with splice(2) through a pipe per direction, driven by its event
loop's reader/writer callbacks.

Run: ``python -m benchmarks.relay_forward '<target json>' <dest port> <cipher>``;
prints ``{"port": <local TCP port>, "master": <pid>}`` and serves until killed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import struct
import sys
import tempfile

from hpcgate.remote import sshmux
from hpcgate.remote.pool import SSHTarget

PIPE_BYTES = 1 << 20
SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
MUX_FWD_LOCAL = 1
PORT_STREAMLOCAL = 0xFFFFFFFE  # OpenSSH's "the listen address is a Unix socket path" (-2)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def open_local_forward(control_path: str, listen_path: str, host: str, port: int) -> None:
    """Ask the master for ``-L listen_path:host:port``; RuntimeError if it refuses."""
    request = (
        struct.pack(">III", sshmux.MUX_C_OPEN_FWD, 1, MUX_FWD_LOCAL)
        + _string(listen_path.encode()) + struct.pack(">I", PORT_STREAMLOCAL)
        + _string(host.encode()) + struct.pack(">I", port)
    )
    with socket.socket(socket.AF_UNIX) as ctl:
        ctl.connect(control_path)
        for payload in (struct.pack(">II", sshmux.MUX_MSG_HELLO, sshmux.SSHMUX_VER), request):
            ctl.sendall(struct.pack(">I", len(payload)) + payload)
        replies = []
        for _ in range(2):  # the master's hello, then its answer
            (length,) = struct.unpack(">I", ctl.recv(4, socket.MSG_WAITALL))
            replies.append(struct.unpack(">I", ctl.recv(length, socket.MSG_WAITALL)[:4])[0])
    if replies[1] != sshmux.MUX_S_OK:
        raise RuntimeError(f"the master refused the local forward to {host}:{port} ({replies[1]:#x})")


class Pump:
    """``src`` -> pipe -> ``dst`` with splice(2); on ``src``'s EOF (once the pipe is
    empty) ``dst`` is shut down for writing: the half-close goes on. ``done`` is set
    when this direction ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket, done: asyncio.Future):
        self.loop, self.src, self.dst, self.done = loop, src.fileno(), dst, done
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            self.size = 65536
        self.pending = 0
        self.eof = self.reading = self.writing = False
        self.step()

    def step(self) -> None:
        try:
            while True:
                moved = 0
                if not self.eof and self.pending < self.size:
                    try:
                        n = os.splice(self.src, self.w, self.size - self.pending, flags=SPLICE)
                        self.eof = n == 0
                        self.pending += n
                        moved += n
                    except BlockingIOError:
                        pass
                if self.pending:
                    try:
                        n = os.splice(self.r, self.dst.fileno(), self.pending, flags=SPLICE)
                        self.pending -= n
                        moved += n
                    except BlockingIOError:
                        pass
                if self.eof and not self.pending:
                    self.dst.shutdown(socket.SHUT_WR)
                    self.finish()
                    return
                if not moved:
                    break
        except OSError:
            self.finish()
            return
        self.watch(not self.eof and self.pending < self.size, self.pending > 0)

    def watch(self, read: bool, write: bool) -> None:
        if read != self.reading:
            if read:
                self.loop.add_reader(self.src, self.step)
            else:
                self.loop.remove_reader(self.src)
            self.reading = read
        if write != self.writing:
            if write:
                self.loop.add_writer(self.dst.fileno(), self.step)
            else:
                self.loop.remove_writer(self.dst.fileno())
            self.writing = write

    def finish(self) -> None:
        self.watch(False, False)
        os.close(self.r)
        os.close(self.w)
        if not self.done.done():
            self.done.set_result(None)


async def carry(client: socket.socket, path: str) -> None:
    loop = asyncio.get_running_loop()
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.setblocking(False)
    client.setblocking(False)
    try:
        await loop.sock_connect(upstream, path)
        ways = [loop.create_future(), loop.create_future()]
        Pump(loop, client, upstream, ways[0])
        Pump(loop, upstream, client, ways[1])
        await asyncio.gather(*ways)
    finally:
        client.close()
        upstream.close()


async def main(target_json: str, dest_port: int, cipher: str) -> None:
    t = json.loads(target_json)
    target = SSHTarget("127.0.0.1", t["port"], t["username"], t["key_path"], known_hosts=t["known_hosts"])
    directory = tempfile.mkdtemp(prefix="hpcgate-relay-")
    master = sshmux.ControlMaster(target, directory, "relay", cipher=cipher)
    await master.start()
    path = os.path.join(directory, "forward.sock")
    open_local_forward(master.control_path, path, "127.0.0.1", dest_port)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except BlockingIOError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(carry(client, path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_reader(server.fileno(), accept)
    print(json.dumps({"port": server.getsockname()[1], "master": master.pid}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
