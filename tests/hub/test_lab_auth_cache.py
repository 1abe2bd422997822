"""A lab behind a real JupyterHub: the proxy's memory of accepted identities
(hpcgate.lab.authcache) never lets through what HubAuth refuses: another user's token,
a revoked token and an expired one (with HubAuth's own cache cut to 1 s, which caps
the proxy's)."""

from __future__ import annotations

import textwrap
import time

import pytest
import requests

from harness.hub import Hub

CATALOG = textwrap.dedent(
    """
    systems:
      local:
        kind: local
        description: This machine
        workdir: "{state_dir}/users/{account}"
        partitions:
          interactive: {}
    groups:
      everyone:
        all_users: true
        grants:
          - system: local
    defaults:
      system: local
    apps:
      workdir-files:
        title: Files of the working directory
        setup: ["printf 'marker' > hpcgate-app-marker.txt"]
        command: ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
        ready_check: {path: /, status: 200}
    """
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    extra = 'c.HPCSpawner.args = ["--HubOAuth.cache_max_age=1"]'
    hub = Hub(tmp_path_factory.mktemp("hub"), catalog=str(catalog), extra=extra).start()
    yield hub
    hub.stop()  # the test stops its server itself


def token_for(hub: Hub, user: str, **kw) -> tuple[str, str]:
    """A new API token of ``user``: (token, its id)."""
    hub.create_user(user)
    r = hub.request("POST", f"/hub/api/users/{user}/tokens", json={"note": "auth cache test", **kw})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["id"]


def get(hub: Hub, path: str, token: str) -> requests.Response:
    return requests.get(hub.url + path, headers={"Authorization": f"token {token}"}, allow_redirects=False, timeout=180)


def test_foreign_revoked_and_expired_tokens_are_refused(hub):
    assert hub.spawn("alice", {"system": "local"}).status_code in (201, 202)
    hub.wait_ready("alice")
    path = "/user/alice/workdir-files/hpcgate-app-marker.txt"
    alice, alice_id = token_for(hub, "alice")
    bob, _ = token_for(hub, "bob")
    short, _ = token_for(hub, "alice", expires_in=3)
    try:
        for _ in range(3):  # the first starts the app; the next ones are remembered
            r = get(hub, path, alice)
            assert r.status_code == 200 and r.text == "marker"
        assert get(hub, path, short).status_code == 200
        # another user's valid token, right after alice's was remembered
        assert get(hub, path, bob).status_code == 403
        # revoked: refused once HubAuth's 1 s cache (and so the proxy's) has run out
        assert hub.request("DELETE", f"/hub/api/users/alice/tokens/{alice_id}").status_code == 204
        time.sleep(1.5)
        assert get(hub, path, alice).status_code in (302, 403)
        # expired at the hub
        time.sleep(max(0.0, 3.5 - 1.5))
        assert get(hub, path, short).status_code in (302, 403)
    finally:
        hub.stop_server("alice")
