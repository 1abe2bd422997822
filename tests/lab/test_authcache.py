"""The proxy's memory of accepted identities (hpcgate.lab.authcache): what it keys on,
how long and how much it keeps, and that the real server still refuses what it must."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families
from tornado.httputil import HTTPHeaders

from hpcgate.lab.authcache import AuthCache, provider_cache_age


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def headers(**kw: str) -> HTTPHeaders:
    h = HTTPHeaders()
    for k, v in kw.items():
        h[k.replace("_", "-")] = v
    return h


def test_only_credentialed_gets_without_a_url_token_are_looked_up():
    cache = AuthCache(5, 10)
    h = headers(Host="127.0.0.1:8888", Cookie="username-x=abc")
    assert cache.key("GET", h, {}) is not None
    assert cache.key("HEAD", h, {}) is not None
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        assert cache.key(method, h, {}) is None, method
    assert cache.key("GET", h, {"token": [b"t"]}) is None
    assert cache.key("GET", headers(Host="127.0.0.1:8888"), {}) is None  # no credentials at all
    assert AuthCache(0, 10).key("GET", h, {}) is None  # turned off
    assert AuthCache(5, 0).key("GET", h, {}) is None


def test_the_key_changes_with_every_credential_and_never_holds_the_secret():
    cache = AuthCache(5, 10)
    secret = "token 0123456789abcdef0123456789abcdef"
    base = {"Host": "127.0.0.1:8888", "Authorization": secret, "Cookie": "a=1"}
    key = cache.key("GET", headers(**base), {})
    assert key is not None and secret.split()[1].encode() not in key and b"0123456789abcdef" not in key
    for name, other in (("Authorization", "token ffff"), ("Cookie", "a=2"), ("Host", "localhost:8888")):
        assert cache.key("GET", headers(**{**base, name: other}), {}) != key, name
    # another process (another salt) makes other keys from the same credentials
    assert AuthCache(5, 10).key("GET", headers(**base), {}) != key


def test_entries_expire_after_ttl_and_are_bounded():
    clock = Clock()
    cache = AuthCache(5, 2, clock=clock)
    k1, k2, k3 = b"1", b"2", b"3"
    cache.put(k1, "alice", False)
    clock.now += 4.9
    assert cache.get(k1) == ("alice", False)
    clock.now += 0.2
    assert cache.get(k1) is None and len(cache) == 0  # expired: gone
    cache.put(k1, "alice", True)
    cache.put(k2, "alice", False)
    assert cache.get(k1) == ("alice", True)  # k1 is now the most recently used
    cache.put(k3, "alice", False)
    assert len(cache) == 2 and cache.get(k2) is None and cache.get(k1) is not None
    cache.put(b"4", None, False)  # a refusal is never remembered
    assert cache.get(b"4") is None
    cache.clear()
    assert len(cache) == 0


def test_the_ttl_is_capped_by_hubauths_own_cache():
    class HubAuth:
        cache_max_age = 2

    class Provider:
        hub_auth = HubAuth()

    assert provider_cache_age(Provider()) == 2.0
    assert provider_cache_age(object()) is None


def test_remembered_identities_refuse_what_the_server_refuses(lab, upstream):
    """After a cookie was accepted (and remembered), the real server still refuses a
    tampered cookie, a wrong token, no credentials and a foreign Host header."""
    s = requests.Session()
    s.get(lab.url(f"login?token={lab.token}"), allow_redirects=False)  # sets the login cookie
    url = lab.url(f"proxy/{upstream}/x")
    for _ in range(3):
        assert s.get(url).status_code == 200
    name, value = next((c.name, c.value) for c in s.cookies if c.name.startswith("username-"))
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    r = requests.get(url, headers={"Cookie": f"{name}={tampered}"}, allow_redirects=False)
    assert r.status_code in (302, 403)
    r = requests.get(url, headers={"Authorization": "token wrong"}, allow_redirects=False)
    assert r.status_code in (302, 403)
    assert requests.get(url, allow_redirects=False).status_code == 302
    # the same accepted cookie with a Host the server does not serve: the Host check still runs
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    r = requests.get(url, headers={"Cookie": cookie, "Host": "evil.example"}, allow_redirects=False)
    assert r.status_code == 403
    assert s.get(url).status_code == 200


def test_a_token_is_still_signed_into_a_login_cookie_every_time(lab, upstream):
    """Answers that set a cookie are not remembered: each token request without the
    cookie gets the Jupyter server's login cookie, as without the cache."""
    url = lab.url(f"proxy/{upstream}/x")
    for _ in range(3):
        r = requests.get(url, headers=lab.auth)
        assert r.status_code == 200
        assert any(c.startswith("username-") for c in r.raw.headers.getlist("Set-Cookie")), r.headers


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of the Prometheus sample ``name{labels}`` in ``text`` (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_remembered_answers_carry_the_full_paths_headers_and_metrics(lab, upstream):
    """A GET answered with a remembered identity has the same headers as one that took
    the identity provider's full path (the Jupyter server's nosniff, the app's own), and
    counts in the Jupyter server's request-duration histogram and the lab's request
    counter exactly as many times as it was made."""
    s = requests.Session()
    s.get(lab.url(f"login?token={lab.token}"), allow_redirects=False)  # sets the login cookie
    url = lab.url(f"proxy/{upstream}/x")
    duration = {"handler": "hpcgate.lab.proxy.handler.ProxyHandler", "method": "GET", "status_code": "200"}
    jupyter_before = _sample(requests.get(lab.url("metrics"), headers=lab.auth).text, "http_request_duration_seconds_count", **duration)
    lab_before = _sample(requests.get(lab.url("hpcgate/metrics"), headers=lab.auth).text, "hpcgate_lab_proxy_requests_total", app="port")
    answers = [s.get(url) for _ in range(4)]  # the first authenticated in full, the rest remembered
    assert all(r.status_code == 200 for r in answers)
    names = [{k.lower() for k in r.headers} - {"set-cookie"} for r in answers]
    assert all(n == names[0] for n in names), names
    assert all(r.headers["X-Content-Type-Options"] == "nosniff" for r in answers)
    assert all("Content-Security-Policy" not in r.headers for r in answers)  # the app sent none; Jupyter's is not the app's
    jupyter_after = _sample(requests.get(lab.url("metrics"), headers=lab.auth).text, "http_request_duration_seconds_count", **duration)
    lab_after = _sample(requests.get(lab.url("hpcgate/metrics"), headers=lab.auth).text, "hpcgate_lab_proxy_requests_total", app="port")
    assert jupyter_after - jupyter_before == len(answers)
    assert lab_after - lab_before == len(answers)
