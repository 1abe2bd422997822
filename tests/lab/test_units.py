"""Pure functions of hpcgate.lab: host parsing, allowlist, scrubbing, /proc parsing, specs."""

from __future__ import annotations

import io
import os
import socket

import pytest

from hpcgate.appspec import SpecError, call_with_named_args, make_spec, render
from hpcgate.lab.apps.manager import LogTail
from hpcgate.lab.security import HostAllowlist, HostNotAllowed, parse_host, strip_token_query, tcp_peer_uid


@pytest.mark.parametrize("raw", ["2130706433", "0x7f.1", "127.1", "a@b", "a%40b", "[fe80::1%lo]", "x_y", ""])
def test_parse_host_rejects(raw):
    with pytest.raises(HostNotAllowed):
        parse_host(raw)


def test_allowlist_forms():
    allow = HostAllowlist(["localhost", "::1", "10.1.0.0/16"])
    assert allow.allows(parse_host("LocalHost"))
    assert allow.allows(parse_host("[0:0::1]"))
    assert allow.allows(parse_host("10.1.2.3")) and allow.allows(parse_host("[::ffff:10.1.2.3]"))
    assert not allow.allows(parse_host("10.2.0.1")) and not allow.allows(parse_host("localhost.evil"))
    assert HostAllowlist(lambda handler, host: host == "x").allows("x")


def test_strip_token_query_keeps_other_bytes():
    assert strip_token_query("a=%20&token=s&b=1+2&%74oken=t") == "a=%20&b=1+2"
    assert strip_token_query("tokenx=1") == "tokenx=1"


def test_tcp_owner_from_proc():
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    assert tcp_peer_uid(cli) == os.getuid()
    for s in (conn, cli, srv):
        s.close()


def test_named_args_and_templates():
    assert call_with_named_args(lambda port: port + 1, {"port": 1, "base_url": "/"}) == 2
    with pytest.raises(TypeError):
        call_with_named_args(lambda nope: nope, {"port": 1})
    args = {"port": 5, "unix_socket": "/s", "base_url": "/b/"}
    assert render(["--p={port}", "{base_url}x"], args) == ["--p=5", "/b/x"]
    assert render(lambda unix_socket: {"S": "{port}" + unix_socket}, args) == {"S": "5/s"}


def test_spec_validation():
    with pytest.raises(SpecError, match="isolate_network must be true, false or 'auto'"):
        make_spec("a", {"command": ["x"], "isolate_network": "yes"})
    assert make_spec("a", {"command": ["x", "{port}"], "isolate_network": True}).isolate_network is True
    with pytest.raises(SpecError, match="not allowed"):
        make_spec("proxy", {"command": ["x"]})
    with pytest.raises(SpecError, match="restart must be"):
        make_spec("a", {"command": ["x"], "restart": "sometimes"})
    spec = make_spec("a", {"port": 8000, "ready_check": {"path": "/h", "status": [200, 204]}})
    assert not spec.managed and spec.ready_http() == ("/h", frozenset({200, 204}))


def test_log_tail_keeps_last_bytes():
    tail = LogTail(10)
    tail.write(b"0123456789")
    tail.write(b"abc")
    assert tail.text() == "3456789abc"


def test_relay_moves_exactly_count_bytes_and_reports_early_close():
    import threading

    from hpcgate.lab.proxy import splice

    for count, extra in ((3 * splice.BUFFER_SIZE + 17, b"next"), (5, b"")):
        app, app_peer = socket.socketpair()
        browser, browser_peer = socket.socketpair()
        for s in (app_peer, browser):
            s.setblocking(False)
        payload = os.urandom(count)
        feeder = threading.Thread(target=app.sendall, args=(payload + extra,))
        feeder.start()
        got = bytearray()

        def read_all(peer: socket.socket = browser_peer, n: int = count, got: bytearray = got) -> None:
            while len(got) < n:
                got.extend(peer.recv(1 << 16))

        reader = threading.Thread(target=read_all)
        reader.start()
        splice.relay(app_peer.fileno(), browser.fileno(), count, threading.Event())
        feeder.join()
        reader.join()
        assert bytes(got) == payload
        if extra:
            assert app_peer.recv(16) == extra  # the rest stays for the next response
        for s in (app, app_peer, browser, browser_peer):
            s.close()
    app, app_peer = socket.socketpair()
    browser, browser_peer = socket.socketpair()
    app.sendall(b"short")
    app.close()
    with pytest.raises(splice.SpliceError):
        splice.relay(app_peer.fileno(), browser.fileno(), 100, threading.Event())
    for s in (app_peer, browser, browser_peer):
        s.close()


def test_tune_malloc_on_glibc():
    import subprocess
    import sys

    code = "from hpcgate.lab.extension import tune_malloc; print(tune_malloc(4 << 20))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    assert out == str(glibc)


def test_rewritable_response_follows_jupyter_server_proxys_contract():
    """Changing code keeps a custom reason but replaces the standard phrase; each
    callable works on a copy, the original stays as the app sent it."""
    from tornado.httpclient import HTTPRequest, HTTPResponse
    from tornado.httputil import HTTPHeaders

    from hpcgate.lab.proxy import RewritableResponse

    orig = HTTPResponse(HTTPRequest("http://localhost/x"), 200, headers=HTTPHeaders({"A": "1"}), buffer=io.BytesIO(b"dog"), reason="OK")
    first = RewritableResponse(orig)
    second = first.apply_to_copy(lambda r: (setattr(r, "code", 403), r.headers.add("B", "2"), setattr(r, "body", b"cat")))
    assert (second.code, second.reason, second.body, second.headers.get("B")) == (403, "Forbidden", b"cat", "2")
    assert (first.code, first.reason, first.body, "B" in first.headers) == (200, "OK", b"dog", False)
    custom = first.apply_to_copy(lambda r: (setattr(r, "reason", "I'm a teapot"), setattr(r, "code", 418)))
    assert (custom.code, custom.reason) == (418, "I'm a teapot")
