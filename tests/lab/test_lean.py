"""Lean answers (hpcgate.lab.proxy.lean) give exactly the handler's answers.

The same requests, with the same browser credentials, go to the session's lab (lean
answers on, the default) and to a second lab with ``lean_answers = False``: status,
reason, every header in order (the app's ``Date`` aside) and body must be equal, on one
keep-alive connection per lab. The lab's ``hpcgate_lab_proxy_lean_answers_total`` shows
which requests the lean path answered, so each case proves which path it compared.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hpcgate.net import free_port
from tests.lab.labtools import BASE, PROXY_LAB_EXTENSIONS_OFF, UPSTREAM, http_server_of, server_config, wait_http

#: the Host both labs are asked by: the login cookie's name depends on it
HOST = "127.0.0.1:8888"


@contextlib.contextmanager
def _second_lab(root, token: str, extra: str) -> Iterator[int]:
    """A lab with the session lab's token, ``extra`` config lines and the app echoapp;
    yields its port."""
    port = free_port()
    cfg = root / "jupyter_server_config.py"
    cfg.write_text(
        server_config(port, root, PROXY_LAB_EXTENSIONS_OFF)
        + textwrap.dedent(
            f"""
            {extra}
            c.HPCGateLab.apps = {{"echoapp": {{"command": [{sys.executable!r}, {UPSTREAM!r}, "--port", "{{port}}"],
                                              "ready_check": {{"path": "/health", "status": 200}}}}}}
            """
        )
    )
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(root / "cfgdir"),
               JUPYTER_DATA_DIR=str(root / "data"), JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "jupyter"), "server", f"--config={cfg}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}{BASE}api/status", timeout=60, headers={"Authorization": f"token {token}"})
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def plain_lab(tmp_path_factory, lab):
    """A second lab like the session's, its lean answers off; yields its port."""
    with _second_lab(tmp_path_factory.mktemp("plainlab"), lab.token, "c.HPCGateLab.lean_answers = False") as port:
        yield port


class Browser:
    """One keep-alive connection to a lab, logged in with its login cookie only."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, _, headers, _ = self.send("GET", f"{BASE}login?token={token}", cookie=False)
        cookies = [v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie" and v.startswith("username-")]
        assert status == 302 and cookies, headers
        self.cookie = "; ".join(cookies)

    def send(self, method: str, path: str, cookie: bool = True, **headers: str) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {"Host": HOST, **({"Cookie": self.cookie} if cookie else {}), **headers}
        self.conn.request(method, path, headers=headers)
        r = self.conn.getresponse()
        body = r.read()
        headers = [(k, v) for k, v in r.getheaders() if k.lower() != "date" and not (k.lower() == "set-cookie" and v.startswith("_xsrf="))]
        return r.status, r.reason, headers, body

    def lean_answers(self, token: str) -> float:
        text = requests.get(f"http://127.0.0.1:{self.port}{BASE}hpcgate/metrics", headers={"Authorization": f"token {token}"}).text
        return sum(
            s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "hpcgate_lab_proxy_lean_answers_total"
        )


def _compare(lean: Browser, plain: Browser, token: str, method: str, path: str, lean_answered: bool, **headers: str):
    """The same request to both labs (twice to each: the first may fill the auth cache);
    equal answers; whether the lean lab's second answer was a lean one. (Jupyter's own
    pages carry an ``_xsrf`` cookie signed with each server's secret: left out.)"""
    lean.send(method, path, **headers)
    before = lean.lean_answers(token)
    got = lean.send(method, path, **headers)
    answered = lean.lean_answers(token) - before
    plain.send(method, path, **headers)
    want = plain.send(method, path, **headers)
    assert got == want, (path, got, want)
    assert answered == (1 if lean_answered else 0), (path, answered)
    return got


def test_lean_answers_equal_the_handlers(lab, upstream, plain_lab):
    lean, plain = Browser(lab.port, lab.token), Browser(plain_lab, lab.token)
    lean_sock = lean.conn.sock
    p = f"{BASE}proxy/{upstream}"
    # small successes: answered lean, with the handler's headers (nosniff, the app's own)
    status, _, headers, body = _compare(lean, plain, lab.token, "GET", f"{p}/x?a=1", True)
    assert status == 200 and ("X-Content-Type-Options", "nosniff") in headers and b'"uri": "/x?a=1"' in body
    _compare(lean, plain, lab.token, "HEAD", f"{p}/x", True)
    _compare(lean, plain, lab.token, "GET", f"{p}/cookie", True)  # Set-Cookie paths rewritten
    _compare(lean, plain, lab.token, "GET", f"{p}/status/204", True)
    _compare(lean, plain, lab.token, "GET", f"{BASE}proxy/absolute/{upstream}/x", True)
    _compare(lean, plain, lab.token, "GET", f"{p}/x", True, Origin="http://elsewhere.example")  # no CORS grant
    # conditional GET: the app's 304 passes, representation headers dropped as tornado does
    etag = dict(lean.send("GET", f"{p}/gzip")[2])["Etag"]
    status, _, headers, body = _compare(lean, plain, lab.token, "GET", f"{p}/gzip", True, **{"If-None-Match": etag})
    assert status == 304 and body == b"" and "Etag" in dict(headers)
    status, _, headers, _ = _compare(lean, plain, lab.token, "GET", f"{p}/notmodified", True, **{"If-None-Match": '"v1"'})
    assert status == 304 and "Content-Type" not in dict(headers) and "Content-Language" not in dict(headers)
    # keep-alive all along: the lean lab's connection was never closed
    assert lean.conn.sock is lean_sock
    # handed to the handler after the app's head: chunked, large, redirect, app's error
    status, _, headers, body = _compare(lean, plain, lab.token, "GET", f"{p}/big?size=1000&chunked=1", False)
    assert ("Transfer-Encoding", "chunked") in headers and len(body) == 1000
    _compare(lean, plain, lab.token, "GET", f"{p}/big?size=200000", False)
    status, _, headers, _ = _compare(lean, plain, lab.token, "GET", f"{p}/redirect?to=/elsewhere", False)
    assert status == 302 and dict(headers)["Location"] == f"{p}/elsewhere"
    _compare(lean, plain, lab.token, "GET", f"{p}/status/404", False)
    # handed over before the app answered: nobody listens there (502, the handler's text)
    dead = free_port()
    status, _, _, body = _compare(lean, plain, lab.token, "GET", f"{BASE}proxy/{dead}/x", False)
    assert status == 502 and body == b"502 Could not connect to the app\n"
    # never lean: a Host the server refuses, an unknown app, no credentials, a body, a bad path
    status, *_ = _compare(lean, plain, lab.token, "GET", f"{p}/x", False, Host="evil.example")
    assert status in (302, 403)
    assert _compare(lean, plain, lab.token, "GET", f"{BASE}nosuchapp/x", False)[0] == 404
    assert _compare(lean, plain, lab.token, "GET", f"{p}/x", False, Cookie="")[0] == 302
    _compare(lean, plain, lab.token, "GET", f"{p}/x", False, **{"Content-Length": "0"})
    assert _compare(lean, plain, lab.token, "GET", f"{BASE}proxy/{upstream}%FF/x", False)[0] in (400, 404)
    # a named app (running after the first request) and the end of the connection
    lean.send("GET", f"{BASE}echoapp/cookie")
    plain.send("GET", f"{BASE}echoapp/cookie")
    _compare(lean, plain, lab.token, "GET", f"{BASE}echoapp/cookie", True)
    status, _, headers, _ = _compare(lean, plain, lab.token, "GET", f"{p}/cookie", True, Connection="close")
    assert ("Connection", "close") in headers


def test_lean_answers_count_as_activity(lab, upstream):
    """The idle culler reads the lab's last activity: a lean answer moves it."""
    browser = Browser(lab.port, lab.token)
    url = f"{BASE}proxy/{upstream}/x"
    browser.send("GET", url)  # fills the auth cache
    time.sleep(1.1)  # activity is noted at most once a second per app
    before = requests.get(lab.url("api/status"), headers=lab.auth).json()["last_activity"]
    answered = browser.lean_answers(lab.token)
    assert browser.send("GET", url)[0] == 200
    assert browser.lean_answers(lab.token) == answered + 1
    after = requests.get(lab.url("api/status"), headers=lab.auth).json()["last_activity"]
    assert after > before


def test_foreign_port_refused_on_the_lean_path(lab, other_user):
    """A port of another Unix user: 403 with remembered credentials as well."""
    with http_server_of(other_user) as port:
        browser = Browser(lab.port, lab.token)
        for _ in range(3):  # the first fills the auth cache, the others are remembered
            status, _, _, body = browser.send("GET", f"{BASE}proxy/{port}/")
            assert status == 403 and body == b"403 That port belongs to another user\n"


def _hub_request_count(port: int, token: str) -> float:
    """JupyterHub's request-duration histogram's count of the proxy's GETs answered 200."""
    text = requests.get(f"http://127.0.0.1:{port}{BASE}metrics", headers={"Authorization": f"token {token}"}).text
    labels = {"handler": "hpcgate.lab.proxy.handler.ProxyHandler", "method": "GET", "code": "200"}
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "jupyterhub_request_duration_seconds_count" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_lean_answers_log_as_jupyterhub_singleuser_does(tmp_path_factory, lab, upstream):
    """jupyterhub-singleuser logs every request at INFO and counts it in JupyterHub's
    request-duration histogram: a lean answer gives the same line and the same count
    (under the handler's name) as the handler's answer before it."""
    root = tmp_path_factory.mktemp("hublog")
    extra = "import jupyterhub.log; c.ServerApp.tornado_settings = {'log_function': jupyterhub.log.log_request}"
    with _second_lab(root, lab.token, extra) as port:
        browser = Browser(port, lab.token)
        url = f"{BASE}proxy/{upstream}/x?hub=log"
        before = _hub_request_count(port, lab.token)
        answered = browser.lean_answers(lab.token)
        assert browser.send("GET", url)[0] == 200  # the handler (the auth cache is filled)
        assert browser.send("GET", url)[0] == 200  # a lean answer
        assert browser.lean_answers(lab.token) == answered + 1
        assert _hub_request_count(port, lab.token) == before + 2
        deadline = time.monotonic() + 10
        while True:
            lines = [re.sub(r"[0-9.]+ms$", "Nms", line) for line in (root / "server.log").read_text().splitlines() if url in line]
            if len(lines) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(lines) == 2 and lines[0].split("]", 1)[1] == lines[1].split("]", 1)[1] and "200 GET" in lines[0], lines
