"""A small web app the lab tests proxy to (runs as its own process).

Usage: upstream_app.py (--port N | --unix PATH) [--also-tcp N] [--crash-after S]
       [--exit-after S] [--ignore-term] [--child-pidfile F] [--not-ready-for S]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from tornado import httpserver, netutil, web, websocket
from tornado.iostream import StreamClosedError

STATE = {"release": None, "ws_sent": 0, "pings": [], "started": time.monotonic(), "not_ready_for": 0.0}


class Echo(web.RequestHandler):
    def _echo(self):
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "method": self.request.method,
                    "uri": self.request.uri,
                    "headers": list(self.request.headers.get_all()),
                    "body_len": len(self.request.body or b""),
                    "pid": os.getpid(),
                }
            )
        )

    get = post = put = delete = patch = options = _echo

    def head(self):
        self.set_header("Content-Length", "1234")
        self.finish()


class Big(web.RequestHandler):
    async def get(self):
        size = int(self.get_argument("size"))
        block = bytes(range(256)) * 4096  # 1 MiB
        self.set_header("Content-Type", "application/octet-stream")
        if self.get_argument("chunked", None) is None:
            self.set_header("Content-Length", str(size))
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            self.write(piece)
            try:
                await self.flush()
            except StreamClosedError:
                return  # the reader went away
            sent += len(piece)


class Hold(web.RequestHandler):
    async def get(self):
        STATE["release"] = asyncio.Event()
        self.set_header("Content-Type", "text/plain")
        self.set_header("X-Held", "yes")
        self.write("first\n")
        await self.flush()
        await STATE["release"].wait()
        self.finish("last\n")


class Release(web.RequestHandler):
    def get(self):
        if STATE["release"] is not None:
            STATE["release"].set()
        self.finish("ok")


class Sse(web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        for i in range(3):
            self.write(f"data: {i}\n\n")
            await self.flush()
            await asyncio.sleep(0.05)


class Gzip(web.RequestHandler):
    def get(self):
        body = gzip.compress(b"hello gzip " * 1000)
        self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Type", "text/plain")
        self.finish(body)


class Redirect(web.RequestHandler):
    def get(self):
        self.set_status(302)
        self.set_header("Location", self.get_argument("to"))
        self.finish()


class Cookie(web.RequestHandler):
    def get(self):
        self.add_header("Set-Cookie", "appsession=1; Path=/sub; HttpOnly")
        self.add_header("Set-Cookie", "other=2; path=/")
        self.finish("ok")


class Status(web.RequestHandler):
    def get(self, code):
        self.set_status(int(code))
        self.finish()


class NotModified(web.RequestHandler):
    async def get(self):
        # a 304 that still names its representation (tornado's finish() would drop these)
        self.set_status(304)
        self.set_header("Content-Type", "text/css")
        self.set_header("Content-Language", "en")
        self.set_header("Etag", '"v1"')
        await self.flush()
        self.finish()


class Health(web.RequestHandler):
    def get(self):
        if time.monotonic() - STATE["started"] < STATE["not_ready_for"]:
            self.set_status(503)
        self.finish("health")


@web.stream_request_body
class Upload(web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(1 << 40)
        self.hash = hashlib.sha256()
        self.count = 0

    def data_received(self, chunk):
        self.hash.update(chunk)
        self.count += len(chunk)

    def post(self):
        self.finish({"count": self.count, "sha256": self.hash.hexdigest(), "te": self.request.headers.get("Transfer-Encoding")})

    put = post


class WsSent(web.RequestHandler):
    def get(self):
        self.finish({"sent": STATE["ws_sent"], "pings": [p.decode() for p in STATE["pings"]]})


class Ws(websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    @property
    def max_message_size(self):
        return 1 << 30

    def select_subprotocol(self, subprotocols):
        # Deliberately not the first: the proxy must pass on the app's choice.
        return subprotocols[-1] if subprotocols else None

    def on_ping(self, data):
        STATE["pings"].append(data)

    async def on_message(self, message):
        if isinstance(message, str) and message.startswith("close:"):
            self.close(int(message.split(":")[1]), "bye")
            return
        if isinstance(message, str) and message.startswith("flood:"):
            _, n, size = message.split(":")
            payload = b"x" * int(size)
            for _ in range(int(n)):
                await self.write_message(payload, binary=True)
                STATE["ws_sent"] += 1
            return
        if isinstance(message, str) and message == "ping-me":
            self.ping(b"from-app")
            return
        if isinstance(message, str) and message == "protocol":
            await self.write_message(self.selected_subprotocol or "")
            return
        await self.write_message(message, binary=isinstance(message, bytes))


def make_app():
    return web.Application(
        [
            (r".*/big", Big),
            (r".*/hold", Hold),
            (r".*/release", Release),
            (r".*/sse", Sse),
            (r".*/gzip", Gzip),
            (r".*/redirect", Redirect),
            (r".*/cookie", Cookie),
            (r".*/status/(\d+)", Status),
            (r".*/health", Health),
            (r".*/notmodified", NotModified),
            (r".*/upload", Upload),
            (r".*/ws-sent", WsSent),
            (r".*/ws", Ws),
            (r".*", Echo),
        ],
        websocket_max_message_size=1 << 30,
    )


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--unix")
    p.add_argument("--also-tcp", type=int)
    p.add_argument("--crash-after", type=float)
    p.add_argument("--exit-after", type=float)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child-pidfile")
    p.add_argument("--not-ready-for", type=float, default=0.0)
    a = p.parse_args()
    STATE["not_ready_for"] = a.not_ready_for
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.child_pidfile:
        child = subprocess.Popen(["sleep", "600"])
        with open(a.child_pidfile, "w") as f:
            f.write(str(child.pid))
    server = httpserver.HTTPServer(make_app(), max_body_size=1 << 40)
    if a.unix:
        server.add_socket(netutil.bind_unix_socket(a.unix, mode=0o600))
    if a.port:
        server.listen(a.port, "127.0.0.1")
    if a.also_tcp:
        server.listen(a.also_tcp, "127.0.0.1")
    print(f"upstream app listening pid={os.getpid()}", flush=True)
    loop = asyncio.get_running_loop()
    if a.crash_after:
        loop.call_later(a.crash_after, os._exit, 3)
    if a.exit_after:
        loop.call_later(a.exit_after, os._exit, 0)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
