"""Directory logins against a real slapd and a real JupyterHub (hpcgate up --auth ldap).

What a user sees: the directory password logs in; the directory's groups are the VOs
that decide the offer, re-read at every login (a group removed in the directory removes
its systems at the next login); the account on a system comes from the directory entry;
a name differing only in case or Unicode form is the same user or refused.
"""

from __future__ import annotations

import textwrap

import pytest
import requests

from harness.hub import Hub
from hpcgate.hub.identity.ldap import DirectoryAuthenticator
from hpcgate.net import free_port
from hpcgate.sandbox.directory import GROUPS, PEOPLE, SERVICE_DN
from tests.hub.identity.idtools import assert_secrets_hidden, vo_catalog

CATALOG = vo_catalog("{source: ldap, attribute: employeeType}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, directory):
    base = tmp_path_factory.mktemp("ldaphub")
    (base / "catalog.yaml").write_text(CATALOG)
    identity = base / "identity.yaml"
    identity.write_text(
        textwrap.dedent(
            f"""
            ldap:
              url: {directory.url}
              people: ou=people,dc=hpcgate,dc=test
              groups: ou=groups,dc=hpcgate,dc=test
              bind_dn: cn=hub,ou=services,dc=hpcgate,dc=test
              bind_password_file: {directory.service_password_file}
              attributes: [uid, employeeType]
            """
        )
    )
    hub = Hub(
        base / "state",
        catalog=str(base / "catalog.yaml"),
        args=["--auth", "ldap", "--identity", str(identity)],
    ).start()
    yield hub
    for user in hub.get("/hub/api/users").json():
        if user["servers"]:
            hub.request("DELETE", f"/hub/api/users/{user['name']}/server")
    hub.stop()


def offered(session: requests.Session, hub: Hub) -> list[str]:
    r = session.get(hub.url + "/hub/api/hpcgate/offer", timeout=10)
    r.raise_for_status()
    return sorted(s["name"] for s in r.json()["systems"])


def test_directory_password_logs_in_and_groups_are_vos(hub, directory):
    assert hub.try_login("alice", "not-" + directory.password("alice"))[1].status_code != 302
    assert hub.try_login("alice", directory.password("bob"))[1].status_code != 302
    session = hub.login("alice", directory.password("alice"))
    assert sorted(g for g in hub.user_model("alice")["groups"]) == ["ml-team", "physics"]
    assert offered(session, hub) == ["gpu", "phys"]
    carol = hub.login("carol", directory.password("carol"))
    assert offered(carol, hub) == ["sky"]
    # the spawn form shows the same
    form = carol.get(hub.url + "/hub/spawn", timeout=10).text
    assert "Astronomy system" in form and "Physics system" not in form


def test_names_differing_in_case_or_unicode_form_are_one_user_or_refused(hub, directory):
    password = directory.password("bob")
    for typed in ("BOB", "Bob", "\uff22\uff4f\uff42"):  # full-width "Ｂｏｂ" folds to bob
        hub.login(typed, password)
    for typed in ("b\u043eb", "bo\u0301b", "bob\u200b", "b.ob"):  # Cyrillic o, combining accent, zero-width space
        assert hub.try_login(typed, password)[1].status_code != 302
    names = {u["name"] for u in hub.get("/hub/api/users").json()}
    assert not any(n != n.lower() or not n.isascii() for n in names), names
    assert "bob" in names


def test_group_removed_in_directory_removes_its_grant_at_next_login(hub, directory):
    bob = hub.login("bob", directory.password("bob"))
    assert offered(bob, hub) == ["phys"]
    directory.remove_member("physics", "bob")
    try:
        bob = hub.login("bob", directory.password("bob"))
        assert hub.user_model("bob")["groups"] == []
        assert offered(bob, hub) == []
        r = bob.post(
            hub.url + "/hub/api/users/bob/server",
            json={"user_options": {"system": "phys"}},
            headers={"X-XSRFToken": bob.cookies.get("_xsrf", path="/hub/") or ""},
            timeout=30,
        )
        assert r.status_code == 400, r.text
    finally:
        directory.add_member("physics", "bob")
    bob = hub.login("bob", directory.password("bob"))
    assert offered(bob, hub) == ["phys"]


def test_account_comes_from_the_directory_entry(hub, directory):
    hub.login("alice", directory.password("alice"))
    r = hub.spawn("alice", {"system": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    # the local backend's workdir is {state_dir}/users/{account}: the directory's employeeType
    assert (hub.state_dir / "users" / "hpcg-alice").is_dir()
    assert not (hub.state_dir / "users" / "alice").exists()
    hub.stop_server("alice")


def test_no_directory_secret_in_argv_logs_or_readable_files(hub, directory):
    secrets_ = {
        "bind password": directory.service_password_file.read_text().strip(),
        "admin password": directory.admin_password_file.read_text().strip(),
        **{f"password of {u}": directory.password(u) for u in ("alice", "bob", "carol")},
    }
    hub.login("carol", directory.password("carol"))
    assert_secrets_hidden(
        secrets_, hub.log_tail(10**7), (hub.state_dir, directory.root), running=("jupyterhub", "slapd")
    )
    assert directory.secrets_dir.stat().st_mode & 0o077 == 0


class _User:
    def __init__(self, name: str):
        self.name = name

    async def get_auth_state(self) -> dict:
        return {"ldap_groups": ["stale"]}


def _authenticator(directory, port: int | None = None) -> DirectoryAuthenticator:
    return DirectoryAuthenticator(
        server_address="127.0.0.1",
        server_port=port or directory.port,
        tls_strategy="insecure",
        user_search_base=PEOPLE,
        group_search_base=GROUPS,
        lookup_dn_search_user=SERVICE_DN,
        bind_password_file=str(directory.service_password_file),
        auth_state_attributes=["employeeType"],
    )


async def test_refresh_rereads_the_directory_and_drops_users_it_lost(directory):
    a = _authenticator(directory)
    model = await a.refresh_user(_User("bob"))
    assert model["groups"] == ["physics"]
    assert model["auth_state"]["user_attributes"] == {"employeeType": ["hpcg-bob"]}
    assert model["auth_state"]["hpcgate"]["via"] == "ldap"
    assert await a.refresh_user(_User("mallory")) is False  # not in the directory: log in again
    # a directory that does not answer keeps the login as it is (its mark expires on its own)
    assert await _authenticator(directory, port=free_port()).refresh_user(_User("bob")) is True
