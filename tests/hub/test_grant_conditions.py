"""Grant conditions through the real hub and configurable-http-proxy: a second factor
(``mfa: true``) and client networks (``networks``), in the form and the REST API alike.

Clients come from different loopback addresses (127.0.0.5 inside the allowed
127.0.0.4/30, 127.0.0.9 outside it), so the proxy's X-Forwarded-For names a client that
is not the proxy itself. The demo login has no second factor; the OIDC login with TOTP
is in tests/identity/test_oidc_login.py.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from harness.hub import Hub, session_from

CATALOG = textwrap.dedent(
    """
    systems:
      jureca:
        kind: local
        description: JURECA stand-in
        workdir: "{state_dir}/users/{account}"
        partitions:
          dc-cpu: {}
          booster: {}
          campus: {}
    groups:
      users:
        all_users: true
        grants:
          - {system: jureca, partitions: [dc-cpu]}
          - {system: jureca, partitions: [booster], mfa: true}
          - {system: jureca, partitions: [campus], networks: [127.0.0.4/30]}
    """
)
INSIDE, OUTSIDE = "127.0.0.5", "127.0.0.9"
MFA_SENTENCE = "Log in with a second factor to use jureca's booster partition."


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("conditions")
    catalog = state / "catalog.yaml"
    catalog.write_text(CATALOG.replace("{state_dir}", str(state)))
    hub = Hub(state, catalog=str(catalog)).start()
    yield hub
    hub.stop()


def user_token(hub: Hub, user: str) -> str:
    hub.create_user(user)
    r = hub.request("POST", f"/hub/api/users/{user}/tokens", json={"note": "grant conditions"})
    r.raise_for_status()
    return r.json()["token"]


def partitions(offer: dict) -> list[str]:
    return [p["name"] for p in offer["systems"][0]["partitions"]]


def offer_from(hub: Hub, source: str, token: str, base: str | None = None, forwarded: str | None = None) -> dict:
    headers = {"Authorization": f"token {token}"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    r = session_from(source).get((base or hub.url) + "/hub/api/hpcgate/offer", headers=headers, timeout=10)
    r.raise_for_status()
    return r.json()


def hub_port(hub: Hub) -> int:
    return json.loads((hub.state_dir / "hpcgate-up.json").read_text())["hub_port"]


def test_network_grant_follows_the_client_address_behind_the_proxy(hub):
    token = user_token(hub, "nora")
    assert partitions(offer_from(hub, INSIDE, token)) == ["dc-cpu", "campus"]
    outside = offer_from(hub, OUTSIDE, token)
    assert partitions(outside) == ["dc-cpu"]
    assert any(
        n.startswith("Connect from an allowed network (127.0.0.4/30; you connect from 127.0.0.9) to use jureca's campus")
        for n in outside["notices"]
    ), outside["notices"]


def test_spoofed_forwarded_for_is_ignored(hub):
    token = user_token(hub, "sam")
    # through the proxy: the proxy appends the real address after the client's claim
    assert partitions(offer_from(hub, OUTSIDE, token, forwarded=INSIDE)) == ["dc-cpu"]
    # straight to the hub from an untrusted peer: the header is not read at all
    direct = f"http://127.0.0.1:{hub_port(hub)}"
    assert partitions(offer_from(hub, OUTSIDE, token, base=direct, forwarded=INSIDE)) == ["dc-cpu"]
    # control: the same header from a trusted proxy address (loopback 127.0.0.1) counts
    assert partitions(offer_from(hub, "127.0.0.1", token, base=direct, forwarded=INSIDE)) == ["dc-cpu", "campus"]


def test_rest_api_refuses_what_the_form_withholds(hub):
    token = user_token(hub, "rita")
    for source, partition, sentence in [
        (OUTSIDE, "campus", "Connect from an allowed network"),
        (INSIDE, "booster", MFA_SENTENCE),
    ]:
        r = session_from(source).post(
            hub.url + "/hub/api/users/rita/server",
            json={"user_options": {"system": "jureca", "partition": partition}},
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        assert sentence in r.json()["message"]
        assert "" not in hub.user_model("rita")["servers"]


def test_form_says_why_a_partition_is_missing(hub):
    session = hub.login("fred", source=OUTSIDE)
    page = session.get(hub.url + "/hub/spawn", timeout=10).text
    options = re.findall(r'<option value="([^"]+)"', page)
    assert "booster" not in options and "campus" not in options and "dc-cpu" in options
    assert "hpcgate-notices" in page
    assert "Log in with a second factor to use jureca&#x27;s booster partition." in page
    assert "you connect from 127.0.0.9" in page
    inside = hub.login("fred", source=INSIDE).get(hub.url + "/hub/spawn", timeout=10).text
    assert '<option value="campus"' in inside and "you connect from" not in inside

