"""WebSockets through the proxy: negotiation, frames, close codes, size, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hpcgate.net import free_port
from tests.lab.labtools import RssWatch, wait_http

MiB = 1024 * 1024


def ws_url(lab, path):
    return lab.url(path).replace("http://", "ws://")


async def connect(lab, path, subprotocols=None, **kw):
    req = HTTPRequest(ws_url(lab, path), headers=lab.auth)
    return await websocket_connect(req, subprotocols=subprotocols, max_message_size=1 << 30, **kw)


async def test_text_and_binary_echo(lab, upstream):
    for path in (f"proxy/{upstream}/ws", "echoapp/ws", "unixapp/ws"):
        ws = await connect(lab, path)
        await ws.write_message("hello")
        assert await ws.read_message() == "hello"
        await ws.write_message(b"\x00\xffbin", binary=True)
        assert await ws.read_message() == b"\x00\xffbin"
        ws.close()


async def test_subprotocol_is_the_apps_choice(lab, upstream):
    """The app picks (the last offered, here); the browser's handshake carries that choice."""
    ws = await connect(lab, f"proxy/{upstream}/ws", subprotocols=["first", "second", "third"])
    assert ws.selected_subprotocol == "third"
    await ws.write_message("protocol")
    assert await ws.read_message() == "third"
    ws.close()


async def test_ping_reaches_app_and_app_ping_reaches_client(lab, upstream):
    pings = []

    class Client(WebSocketClientConnection):
        def on_ping(self, data):
            pings.append(data)

    ws = Client(HTTPRequest(ws_url(lab, f"proxy/{upstream}/ws"), headers=HTTPHeaders(lab.auth)))
    await ws.connect_future
    ws.ping(b"hello-app")
    await ws.write_message("ping-me")
    await ws.write_message("sync")
    assert await ws.read_message() == "sync"
    for _ in range(50):
        if pings:
            break
        await asyncio.sleep(0.05)
    assert pings == [b"from-app"]
    seen = requests.get(f"http://127.0.0.1:{upstream}/ws-sent").json()["pings"]
    assert "hello-app" in seen
    ws.close()


async def test_close_codes_pass_both_ways(lab, upstream):
    ws = await connect(lab, f"proxy/{upstream}/ws")
    await ws.write_message("close:4002")
    assert await ws.read_message() is None
    assert ws.close_code == 4002 and ws.close_reason == "bye"


async def test_messages_larger_than_peers_limit(lab, upstream):
    """jupyter-server-proxy drops connections at 10 MiB; the limit in these tests is 48 MiB (default 256)."""
    ws = await connect(lab, f"proxy/{upstream}/ws")
    payload = bytes(range(256)) * (64 * 1024 * 2)  # 32 MiB
    await ws.write_message(payload, binary=True)
    assert await ws.read_message() == payload
    ws.close()


async def test_message_over_the_limit_closes_with_1009(lab, upstream):
    """Both directions: the relay follows frame headers and refuses before passing the frame on."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    ws = await connect(lab, f"proxy/{upstream}/ws")
    writing = ws.write_message(b"x" * (49 * MiB), binary=True)
    assert await ws.read_message() is None
    assert ws.close_code == 1009
    with contextlib.suppress(WebSocketClosedError, StreamClosedError):
        await writing
    ws = await connect(lab, f"proxy/{upstream}/ws")
    await ws.write_message("small first")
    assert await ws.read_message() == "small first"
    await ws.write_message(f"flood:1:{49 * MiB}")
    assert await ws.read_message() is None
    assert ws.close_code == 1009


async def test_slow_client_slows_the_app(lab, upstream):
    """The app floods 300 x 1 MiB; while the client does not read, the app is held back."""
    ws = await connect(lab, f"proxy/{upstream}/ws")
    before = requests.get(f"http://127.0.0.1:{upstream}/ws-sent").json()["sent"]
    with RssWatch(lab.pid) as watch:
        await ws.write_message(f"flood:300:{MiB}")
        await asyncio.sleep(2)  # not reading
        stalled = requests.get(f"http://127.0.0.1:{upstream}/ws-sent").json()["sent"] - before
        got = 0
        while got < 300:
            msg = await ws.read_message()
            assert msg is not None and len(msg) == MiB
            got += 1
    assert stalled < 150, f"app sent {stalled} MiB while the client read nothing"
    assert watch.growth_mib < 64
    ws.close()


async def test_raw_socket_proxy(lab):
    ws = await connect(lab, "rawsock/")
    await ws.write_message(b"raw bytes", binary=True)
    assert await ws.read_message() == b"raw bytes"
    await ws.write_message("text too")
    assert await ws.read_message() == b"text too"
    ws.close()
    assert lab.s.get(lab.url("rawsock/")).status_code == 405


async def test_websocket_to_closed_port_fails_cleanly(lab):
    from tornado.httpclient import HTTPClientError

    with pytest.raises(HTTPClientError) as err:
        await connect(lab, f"proxy/{free_port()}/ws")
    assert err.value.code == 502


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory):
    """A second server with hpcgate.lab that speaks HTTPS itself (JupyterHub's
    internal_ssl, a site's own certificate): the browser side of the relay is then a
    TLS stream, not a plain socket."""
    root = tmp_path_factory.mktemp("tls-lab")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
        check=True, capture_output=True,
    )
    port, token = free_port(), secrets.token_hex(16)
    (root / "config.py").write_text(textwrap.dedent(f"""
        c.ServerApp.port = {port}
        c.ServerApp.ip = "127.0.0.1"
        c.ServerApp.open_browser = False
        c.ServerApp.allow_root = True
        c.ServerApp.root_dir = {str(root)!r}
        c.ServerApp.certfile = {str(root / "cert.pem")!r}
        c.ServerApp.keyfile = {str(root / "key.pem")!r}
        c.ServerApp.jpserver_extensions = {{"jupyter_server_proxy": False, "jupyterlab": False,
                                            "jupyter_lsp": False, "notebook_shim": False}}
    """))
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_CONFIG_DIR": str(root / "cfg"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime")}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyter"), "server", f"--config={root / 'config.py'}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"https://127.0.0.1:{port}/api/status", timeout=60, verify=str(root / "cert.pem"))
        yield port, token, str(root / "cert.pem")
    finally:
        proc.terminate()
        proc.wait(30)


async def test_relay_behind_a_tls_server(tls_lab, upstream):
    port, token, cert = tls_lab
    req = HTTPRequest(f"wss://127.0.0.1:{port}/proxy/{upstream}/ws", headers={"Authorization": f"token {token}"},
                      ca_certs=cert)
    ws = await websocket_connect(req, max_message_size=1 << 30)
    await ws.write_message("over tls")
    assert await ws.read_message() == "over tls"
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB: more than one TLS read and write
    await ws.write_message(payload, binary=True)
    assert await ws.read_message() == payload
    await ws.write_message("close:4003")
    assert await ws.read_message() is None
    assert ws.close_code == 4003
    no_auth = HTTPRequest(f"wss://127.0.0.1:{port}/proxy/{upstream}/ws", ca_certs=cert)
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(no_auth)
    assert refused.value.code == 403


async def test_messages_on_an_open_websocket_count_as_activity(lab, upstream):
    """A long-lived websocket (a desktop, a kernel-like app) keeps the server active for
    the hub's idle culler while messages flow, not only at its upgrade."""

    def activity():
        return requests.get(lab.url("api/status"), headers=lab.auth, timeout=10).json()["last_activity"]

    ws = await connect(lab, f"proxy/{upstream}/ws")
    await ws.write_message("first")
    assert await ws.read_message() == "first"
    await asyncio.sleep(1.2)  # past the proxy's once-a-second throttle
    before = activity()
    await asyncio.sleep(1.2)
    assert activity() == before  # an idle websocket is not activity
    await ws.write_message("later")
    assert await ws.read_message() == "later"
    assert activity() > before
    ws.close()
