"""The home page says "cancelled by an admin" when an admin stops a user's server
through JupyterHub's server API (what the admin page calls), and says nothing of the
kind when the user stops it or a service does. A real hub (``hpcgate up``) on a local
system; the admin logs in with a browser-like session, as on the admin page."""

from __future__ import annotations

import pytest

from harness.hub import Hub, wait_for, xsrf_headers
from harness.ops import local_catalog

ADMIN = "boss"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(local_catalog({"open": {}}))
    hub = Hub(tmp_path_factory.mktemp("hub"), catalog=str(catalog), admins=(ADMIN,)).start()
    try:
        yield hub
    finally:
        hub.stop_every_server()
        hub.stop()


def stopped_state(hub: Hub, user: str, server: str = "") -> dict:
    model = hub.get(f"/hub/api/users/{user}?include_stopped_servers=1").json()
    return model["servers"].get(server, {}).get("state", {})


def start(hub: Hub, user: str, server: str = "") -> None:
    hub.create_user(user)
    path = f"/hub/api/users/{user}/servers/{server}" if server else f"/hub/api/users/{user}/server"
    r = hub.request("POST", path, json={"user_options": {"system": "local", "partition": "open"}})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: (hub.user_model(user)["servers"].get(server) or {}).get("ready"), 120, f"{user}/{server} ready")


def delete_as(session, hub: Hub, path: str) -> None:
    r = session.delete(hub.url + path, headers=xsrf_headers(session), timeout=60)
    assert r.status_code in (202, 204), (r.status_code, r.text)


def test_an_admins_stop_is_said_on_the_home_page(hub):
    start(hub, "ada")
    admin = hub.login(ADMIN, password=hub.admin_password)
    delete_as(admin, hub, "/hub/api/users/ada/server")
    wait_for(lambda: "" not in hub.user_model("ada")["servers"], 60, "ada's server to stop")
    reason = stopped_state(hub, "ada").get("stop_reason", "")
    assert "cancelled by an admin" in reason, reason
    assert ADMIN not in reason
    home = hub.login("ada").get(hub.url + "/hub/home", timeout=30).text
    assert "hpcgate-stop-reason" in home and "cancelled by an admin" in home, home[-3000:]
    # a new start clears it
    start(hub, "ada")
    assert stopped_state(hub, "ada").get("stop_reason", "") == ""


def test_a_named_server_stopped_by_an_admin_says_so_too(hub):
    start(hub, "ada", "second")
    admin = hub.login(ADMIN, password=hub.admin_password)
    delete_as(admin, hub, "/hub/api/users/ada/servers/second")
    wait_for(lambda: "second" not in hub.user_model("ada")["servers"], 60, "ada/second to stop")
    assert "cancelled by an admin" in stopped_state(hub, "ada", "second").get("stop_reason", "")


def test_the_users_own_stop_and_a_services_stop_say_nothing_of_an_admin(hub):
    start(hub, "bea")
    own = hub.login("bea")
    delete_as(own, hub, "/hub/api/users/bea/server")
    wait_for(lambda: "" not in hub.user_model("bea")["servers"], 60, "bea's server to stop")
    assert "admin" not in stopped_state(hub, "bea").get("stop_reason", "")
    # the tests' service token (a service, as the idle culler is)
    start(hub, "bea")
    hub.stop_server("bea")
    assert "admin" not in stopped_state(hub, "bea").get("stop_reason", "")
