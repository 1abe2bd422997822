"""HTTP through the proxy: routes, streaming with bounded memory, headers, rewriting."""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading

import requests

from tests.lab.labtools import RssWatch

MiB = 1024 * 1024


def test_port_route_strips_prefix_and_keeps_encoding(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/{upstream}/hello/w%2Fx?a=1&b=%20"))
    assert r.status_code == 200, r.text
    assert r.json()["uri"] == "/hello/w%2Fx?a=1&b=%20"


def test_absolute_route_keeps_full_path(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/absolute/{upstream}/deep/path"))
    assert r.json()["uri"] == f"/user/alice/proxy/absolute/{upstream}/deep/path"


def test_host_port_route_for_allowlisted_host(lab, upstream):
    for host in ("localhost", "127.0.0.1"):
        r = lab.s.get(lab.url(f"proxy/{host}:{upstream}/x"))
        assert r.status_code == 200 and r.json()["uri"] == "/x"


def test_bare_prefix_redirects_to_slash(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/{upstream}"), allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith(f"proxy/{upstream}/")


def test_methods_and_body_pass(lab, upstream):
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = lab.s.request(method, lab.url(f"proxy/{upstream}/m"), data=b"abc" if method != "OPTIONS" else None)
        assert r.status_code == 200, (method, r.text)
        assert r.json()["method"] == method
    r = lab.s.head(lab.url(f"proxy/{upstream}/m"))
    assert r.status_code == 200 and r.headers["Content-Length"] == "1234" and r.content == b""


def test_status_codes_pass(lab, upstream):
    for code in (201, 204, 304, 404, 418, 503):
        assert lab.s.get(lab.url(f"proxy/{upstream}/status/{code}")).status_code == code


def test_caching_headers_are_the_apps(lab, upstream):
    """The proxy adds no Etag of its own to a small response sent whole, and leaves
    If-None-Match to the app (which answers 200 here: its own Etag differs)."""
    direct = requests.get(f"http://127.0.0.1:{upstream}/big?size=100")
    assert "Etag" not in direct.headers  # the app streams it: no Etag
    r = lab.s.get(lab.url(f"proxy/{upstream}/big?size=100"))
    assert r.status_code == 200 and len(r.content) == 100
    assert "Etag" not in r.headers, r.headers
    r = lab.s.get(lab.url(f"proxy/{upstream}/hello"))
    etag = r.headers["Etag"]  # the app's own (tornado computes it over the echoed request)
    again = lab.s.get(lab.url(f"proxy/{upstream}/hello"), headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.json()["uri"] == "/hello"
    assert ["If-None-Match", etag] in again.json()["headers"]


def test_gzip_passes_untouched(lab, upstream):
    direct = requests.get(f"http://127.0.0.1:{upstream}/gzip", stream=True).raw.read()
    r = lab.s.get(lab.url(f"proxy/{upstream}/gzip"), stream=True)
    assert r.headers["Content-Encoding"] == "gzip"
    raw = r.raw.read(decode_content=False)
    assert raw == direct and gzip.decompress(raw).startswith(b"hello gzip")


def test_hop_by_hop_headers_removed(lab, upstream):
    r = lab.s.get(
        lab.url(f"proxy/{upstream}/h"),
        headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "300", "TE": "trailers",
                 "Proxy-Authorization": "Basic eA==", "X-End-To-End": "yes"},
    )
    names = {k.lower() for k, _ in r.json()["headers"]}
    assert "x-end-to-end" in names
    assert not names & {"x-secret-hop", "keep-alive", "te", "proxy-authorization"}


def test_credentials_for_jupyter_never_reach_the_app(lab, upstream):
    """GHSA-q52h-2389-h4hv: hub/server cookies, ?token= and token Authorization removed."""
    cookies = "jupyterhub-session-id=s; jupyterhub-user-alice=u; _xsrf=x; username-127-0-0-1-8888=v; appcookie=keep"
    r = requests.get(
        lab.url(f"proxy/{upstream}/c?token={lab.token}&keep=1"),
        headers={"Cookie": cookies, "Authorization": f"token {lab.token}"},
    )
    assert r.status_code == 200
    data = r.json()
    assert data["uri"] == "/c?keep=1"
    headers = {k.lower(): v for k, v in data["headers"]}
    assert "authorization" not in headers
    assert headers["cookie"] == "appcookie=keep"
    assert lab.token not in r.text
    # Bearer too; Basic is the app's own and passes.
    r = requests.get(lab.url(f"proxy/{upstream}/c"), headers={"Authorization": f"Bearer {lab.token}"})
    assert "authorization" not in {k.lower() for k, _ in r.json()["headers"]}


def test_location_and_set_cookie_rewritten_for_prefixed_apps(lab, upstream):
    prefix = f"/user/alice/proxy/{upstream}"
    for to, want in (
        ("/next", f"{prefix}/next"),
        (f"http://localhost:{upstream}/abs?q=1", f"{prefix}/abs?q=1"),
        ("https://example.org/elsewhere", "https://example.org/elsewhere"),
        ("relative/path", "relative/path"),
    ):
        r = lab.s.get(lab.url(f"proxy/{upstream}/redirect"), params={"to": to}, allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"] == want
    r = lab.s.get(lab.url(f"proxy/{upstream}/cookie"))
    set_cookies = r.raw.headers.getlist("Set-Cookie")
    assert f"appsession=1; Path={prefix}/sub; HttpOnly" in set_cookies
    assert f"other=2; path={prefix}/" in set_cookies
    # absolute routes are not rewritten
    r = lab.s.get(lab.url(f"proxy/absolute/{upstream}/redirect"), params={"to": "/next"}, allow_redirects=False)
    assert r.headers["Location"] == "/next"


def test_redirects_are_not_followed(lab, upstream):
    """CVE-2022-21697: a redirect from the app must not lead the proxy elsewhere."""
    r = lab.s.get(lab.url(f"proxy/{upstream}/redirect"), params={"to": "http://169.254.169.254/latest"}, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "http://169.254.169.254/latest"


def test_headers_arrive_before_body_ends(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/{upstream}/hold"), stream=True, timeout=30)
    assert r.status_code == 200 and r.headers["X-Held"] == "yes"
    it = r.iter_content(chunk_size=None)
    assert next(it) == b"first\n"
    assert requests.get(f"http://127.0.0.1:{upstream}/release").status_code == 200
    assert b"".join(it) == b"last\n"


def test_server_sent_events_stream(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/{upstream}/sse"), headers={"Accept": "text/event-stream"}, stream=True)
    assert r.headers["Content-Type"] == "text/event-stream"
    assert b"".join(r.iter_content(None)) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_chunked_response_and_chunked_upload(lab, upstream):
    r = lab.s.get(lab.url(f"proxy/{upstream}/big"), params={"size": 3 * MiB + 5, "chunked": 1})
    assert len(r.content) == 3 * MiB + 5
    payload = [b"a" * 1000, b"b" * 70000, b"c"]
    r = lab.s.post(lab.url(f"proxy/{upstream}/upload"), data=iter(payload))
    assert r.json()["count"] == 71001
    assert r.json()["sha256"] == hashlib.sha256(b"".join(payload)).hexdigest()


def test_two_gib_download_in_bounded_memory(lab, upstream):
    size = 2 * 1024 * MiB
    with RssWatch(lab.pid) as watch:
        r = lab.s.get(lab.url(f"proxy/{upstream}/big"), params={"size": size}, stream=True)
        assert r.headers["Content-Length"] == str(size)
        got = sum(len(c) for c in r.iter_content(4 * MiB))
    assert got == size
    print(f"2 GiB download: server RSS grew {watch.growth_mib:.1f} MiB")
    assert watch.growth_mib < 64


def test_one_gib_upload_in_bounded_memory(lab, upstream):
    size = 1024 * MiB
    block = b"u" * MiB
    h = hashlib.sha256()
    for _ in range(size // MiB):
        h.update(block)

    class Body:
        def __init__(self):
            self.left = size

        def __len__(self):
            return size

        def read(self, n=-1):
            if not self.left:
                return b""
            n = min(self.left, MiB)
            self.left -= n
            return block[:n]

    with RssWatch(lab.pid) as watch:
        r = lab.s.put(lab.url(f"proxy/{upstream}/upload"), data=Body(), headers={"Content-Length": str(size)})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == size and r.json()["sha256"] == h.hexdigest()
    assert r.json()["te"] is None  # Content-Length upload stays Content-Length
    print(f"1 GiB upload: server RSS grew {watch.growth_mib:.1f} MiB")
    assert watch.growth_mib < 64


def test_slow_reader_does_not_grow_memory(lab, upstream):
    """A client that stops reading stalls the app instead of filling the server."""
    with RssWatch(lab.pid) as watch:
        s = socket.create_connection(("127.0.0.1", lab.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(
            f"GET /user/alice/proxy/{upstream}/big?size={512 * MiB} HTTP/1.1\r\nHost: 127.0.0.1:{lab.port}\r\n"
            f"Authorization: token {lab.token}\r\n\r\n".encode()
        )
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        stop = threading.Event()
        stop.wait(2)  # not reading: kernel buffers fill, then the proxy must stop pulling
        s.close()
    assert watch.growth_mib < 64


def test_concurrent_requests_share_keepalive(lab, upstream):
    results = []

    def worker():
        with requests.Session() as s:
            s.headers.update(lab.auth)
            for i in range(20):
                results.append(s.get(lab.url(f"proxy/{upstream}/k{i}")).json()["uri"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(results) == 80 and all(u.startswith("/k") for u in results)


def test_unreachable_port_is_502(lab):
    from hpcgate.net import free_port

    r = lab.s.get(lab.url(f"proxy/{free_port()}/"))
    assert r.status_code == 502


def _headers(r: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.json()["headers"]}


def test_apps_learn_their_mount_point_and_the_browser_cannot_claim_one(lab, upstream):
    """X-Forwarded-Prefix/-Context and X-Proxycontextpath (jupyter-server-proxy's names),
    set by the proxy only: the browser's own copies are dropped, and an app that sees
    full paths gets none."""
    claimed = {"X-Forwarded-Prefix": "/evil", "X-Forwarded-Context": "/evil", "X-ProxyContextPath": "/evil"}
    for path, prefix in ((f"proxy/{upstream}/a", f"/user/alice/proxy/{upstream}"), ("echoapp/a", "/user/alice/echoapp")):
        got = _headers(lab.s.get(lab.url(path), headers=claimed))
        for name in ("x-forwarded-prefix", "x-forwarded-context", "x-proxycontextpath"):
            assert got[name] == prefix, (path, name, got)
    for path in (f"proxy/absolute/{upstream}/a", "absapp/a"):
        got = _headers(lab.s.get(lab.url(path), headers=claimed))
        assert not {"x-forwarded-prefix", "x-forwarded-context", "x-proxycontextpath"} & set(got), (path, got)


def test_a_raw_fragment_never_reaches_the_app(lab, upstream):
    """What follows a raw '#' is the browser's (query included); an encoded %23 is path."""
    with socket.create_connection(("127.0.0.1", lab.port)) as sock:
        sock.sendall(
            f"GET /user/alice/proxy/{upstream}/page#frag?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{lab.port}\r\n"
            f"Authorization: token {lab.token}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b" 200 " in data.split(b"\r\n", 1)[0], data[:200]
    assert b'"uri": "/page"' in data, data[-400:]
    r = lab.s.get(lab.url(f"proxy/{upstream}/a%23b?x=1"))
    assert r.json()["uri"] == "/a%23b?x=1"


def test_serverproxy_endpoints_for_its_lab_extension(lab):
    """jupyter-server-proxy's frontend asks /server-proxy/servers-info: every app once,
    launcher entries off (hpcgate's extension shows them); no commands or callables."""
    r = lab.s.get(lab.url("server-proxy/servers-info"))
    assert r.status_code == 200
    listed = {p["name"]: p for p in r.json()["server_processes"]}
    assert {"echoapp", "jspcallable", "rawsock"} <= set(listed)
    assert listed["jspcallable"]["new_browser_tab"] is False
    assert not any(p["launcher_entry"]["enabled"] for p in listed.values())
    assert "command" not in r.text and "lambda" not in r.text
    assert requests.get(lab.url("server-proxy/servers-info"), allow_redirects=False).status_code in (302, 403)
    assert lab.s.get(lab.url("server-proxy/icon/no-such-app")).status_code == 404
