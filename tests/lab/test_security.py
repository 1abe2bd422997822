"""Regression tests for the peers' security history, against the real server."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from hpcgate.net import free_port
from tests.lab.labtools import http_server_of, wait_http


def test_http_needs_authentication(lab, upstream):
    """CVE-2024-28179 (HTTP side): no token, no cookie, no proxying."""
    url = lab.url(f"proxy/{upstream}/x")
    r = requests.get(url, allow_redirects=False)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert requests.post(url, data=b"x").status_code == 403
    assert requests.get(url, headers={"Authorization": "token wrong"}, allow_redirects=False).status_code in (302, 403)
    assert requests.get(lab.url("echoapp/x"), allow_redirects=False).status_code == 302


async def test_websocket_upgrade_needs_authentication(lab, upstream):
    """CVE-2024-28179: an unauthenticated websocket upgrade is refused before reaching the app."""
    for path in (f"proxy/{upstream}/ws", "echoapp/ws", "rawsock/"):
        url = lab.url(path).replace("http://", "ws://")
        with pytest.raises(HTTPClientError) as err:
            await websocket_connect(HTTPRequest(url))
        assert err.value.code == 403


def test_cross_origin_post_with_cookie_refused(lab, upstream):
    """State-changing requests authenticated by cookie must come from our own origin."""
    s = requests.Session()
    s.get(lab.url(f"login?token={lab.token}"), allow_redirects=False)  # sets the login cookie
    assert s.get(lab.url(f"proxy/{upstream}/x")).status_code == 200
    assert s.post(lab.url(f"proxy/{upstream}/x"), headers={"Origin": "https://evil.example", "Connection": "close"}).status_code == 403
    assert s.post(lab.url(f"proxy/{upstream}/x"), headers={"Origin": f"http://127.0.0.1:{lab.port}"}).status_code == 200


def test_host_is_never_reflected(lab):
    """CVE-2024-35225: the host part of the URL never appears in the answer."""
    for host in ("<script>alert(1)</script>", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "evil.example", "a'\"><img src=x>"):
        try:
            r = lab.s.get(lab.url(f"proxy/{host}:8000/"), allow_redirects=False)
        except requests.ConnectionError:
            continue  # tornado refused the request line itself: nothing reflected either
        assert r.status_code in (400, 403, 404)
        assert "script" not in r.text and "evil" not in r.text and "img" not in r.text
        assert r.headers.get("Content-Type", "text/plain").startswith("text/plain")


@pytest.mark.parametrize(
    "hostport",
    [
        "evil.example:80",
        "localhost@evil.example:80",
        "localhost%40evil.example:80",
        "evil.example%2F@localhost:80",
        "2130706433:{port}",
        "0x7f000001:{port}",
        "0177.0.0.1:{port}",
        "127.1:{port}",
        "[::ffff:10.0.0.1]:{port}",
        "[fe80::1%25lo]:{port}",
        "127.0.0.1.nip.io:{port}",
        "LOCALHOST.:{port}",
        "10.0.0.1:{port}",
        "[::]:{port}",
        "0.0.0.0:{port}",
        "localhost:{port}%23@evil.example",
        "localhost:{port}@evil.example",
    ],
)
def test_allowlist_not_bypassable(lab, upstream, hostport):
    """CVE-2022-21697: encoded paths, @, numeric and IPv6 forms cannot escape the allowlist."""
    r = lab.s.get(lab.url("proxy/" + hostport.format(port=upstream) + "/"), allow_redirects=False)
    assert r.status_code in (400, 403, 404), r.text
    assert r.status_code != 200


def test_ipv6_loopback_forms_allowed(lab):
    """The allowlisted ::1 matches however it is written."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "::1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://[::1]:{port}/", timeout=20)
        for host in ("[::1]", "[0:0:0:0:0:0:0:1]"):
            assert lab.s.get(lab.url(f"proxy/{host}:{port}/")).status_code == 200
    finally:
        proc.terminate()
        proc.wait()


def test_port_of_another_user_refused(lab, other_user):
    """A TCP port whose socket belongs to another Unix user is refused (HTTP and websocket)."""
    with http_server_of(other_user) as port:
        assert requests.get(f"http://127.0.0.1:{port}/").status_code == 200  # it is really there
        for path in (f"proxy/{port}/", f"proxy/absolute/{port}/", f"proxy/localhost:{port}/"):
            r = lab.s.get(lab.url(path))
            assert r.status_code == 403, path


async def test_websocket_to_another_users_port_refused(lab, other_user):
    port = free_port()
    up = str(__import__("pathlib").Path(__file__).with_name("upstream_app.py"))
    # The test app needs tornado: run the venv's python as the other user is not possible
    # (0700 home); a bare TCP listener is enough to prove the refusal happens first.
    proc = subprocess.Popen(
        ["runuser", "-u", other_user, "--", "/usr/bin/python3", "-c",
         f"import socket,time;s=socket.socket();s.bind(('127.0.0.1',{port}));s.listen();time.sleep(60)"],
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if f"{port:04X}" in open("/proc/net/tcp").read():
                break
            time.sleep(0.1)
        url = lab.url(f"proxy/{port}/ws").replace("http://", "ws://")
        with pytest.raises(HTTPClientError) as err:
            await websocket_connect(HTTPRequest(url, headers=lab.auth))
        assert err.value.code == 403
        assert up
    finally:
        proc.kill()
        proc.wait()


def test_app_sockets_live_in_private_dir(lab):
    import os
    import stat

    r = lab.s.post(lab.url("hpcgate/api/apps/unixapp"))
    assert r.status_code == 200, r.text
    st = os.stat(os.path.dirname(r.json()["unix_socket"]))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert lab.s.get(lab.url("unixapp/via-unix")).json()["uri"] == "/via-unix"
