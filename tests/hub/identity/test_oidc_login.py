"""OIDC logins with a second factor: Debian's glewlwyd in front of the slapd directory.

A real browser (Debian's chromium through playwright) logs in through glewlwyd's own
pages: the directory password, then a TOTP code the test computes (RFC 6238, pyotp),
then "Continue". The hub (hpcgate up --auth oidc) takes the VOs from the entitlement
claim and the account from another claim, refreshes auth_state when the access token
expires (OAuthenticator's refresh_user with the refresh token), and logout ends the hub
session. No secret shows up in argv, the logs or a world-readable file.
"""

from __future__ import annotations

import os
import textwrap
import time

import pyotp
import pytest

from harness.hub import Hub, chromium, wait_for
from harness.missing import not_installed
from hpcgate.net import free_port
from hpcgate.sandbox.idp import GLEWLWYD, IdentityProvider
from tests.hub.identity.idtools import assert_secrets_hidden, vo_catalog

pytestmark = pytest.mark.browser

#: short-lived access tokens, so that the refresh path runs within the test
TOKEN_LIFETIME = 12

# gpu's booster partition needs a second factor (the login's amr): the TOTP login has one
CATALOG = (
    vo_catalog("{source: auth_state, key: hpcgate_account}")
    .replace("accounts: {source: auth_state, key: hpcgate_account}\n    partitions: {interactive: {}}",
             "accounts: {source: auth_state, key: hpcgate_account}\n    partitions: {interactive: {}, booster: {}}")
    .replace("ml-team: {grants: [{system: gpu}]}",
             "ml-team: {grants: [{system: gpu, partitions: [interactive]}, {system: gpu, partitions: [booster], mfa: true}]}")
)  # fmt: skip
assert "booster" in CATALOG and "mfa: true" in CATALOG


@pytest.fixture(scope="module")
def idp_hub(tmp_path_factory, directory):
    if not os.path.exists(GLEWLWYD):
        not_installed("glewlwyd is not installed (scripts/install-system-deps.sh installs it)")
    base = tmp_path_factory.mktemp("oidc")
    (base / "catalog.yaml").write_text(CATALOG)
    extra = textwrap.dedent(
        """
        c.JupyterHub.load_roles[0]["scopes"].append("admin:auth_state")
        c.Authenticator.auth_refresh_age = 2
        """
    )
    hub = Hub(base / "hub", catalog=str(base / "catalog.yaml"), extra=extra)
    idp = IdentityProvider(
        base / "idp",
        free_port(),
        directory,
        redirect_uris=(hub.url + "/hub/oauth_callback",),
        access_token_lifetime=TOKEN_LIFETIME,
    )
    idp.up()
    identity = base / "identity.yaml"
    identity.write_text(
        textwrap.dedent(
            f"""
            oidc:
              issuer: {idp.issuer}
              client_id: hpcgate-hub
              client_secret_file: {idp.client_secret_file}
              callback_url: {hub.url}/hub/oauth_callback
              scopes: [openid]
              account_claim: hpc_account
              groups_claim: eduperson_entitlement
            """
        )
    )
    hub.args = ["--auth", "oidc", "--identity", str(identity)]
    try:
        hub.start()
        yield hub, idp
    finally:
        for user in hub.get("/hub/api/users").json() if hub.proc else []:
            if user["servers"]:
                hub.request("DELETE", f"/hub/api/users/{user['name']}/server")
        hub.stop()
        idp.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def alice_page(browser, idp_hub, directory, artifacts_dir):
    """alice logged in through glewlwyd's pages: password, TOTP code, Continue."""
    hub, idp = idp_hub
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(hub.url + "/hub/oauth_login?next=/hub/spawn")
    page.wait_for_selector("#username")
    assert page.url.startswith(idp.url + "/login.html"), page.url
    page.fill("#username", "alice")
    page.fill("#password", directory.password("alice"))
    page.click("#loginbut")
    page.wait_for_selector("#value")  # the TOTP step
    page.screenshot(path=str(artifacts_dir / "oidc-totp-step.png"))
    page.fill("#value", pyotp.TOTP(idp.totp_seed("alice")).now())
    page.click("#but")
    page.click("button[title='Continue to client application']")
    page.wait_for_url(hub.url + "/hub/spawn**", timeout=30_000)
    page.wait_for_selector("#hpcgate-form")
    page.screenshot(path=str(artifacts_dir / "oidc-spawn-form.png"), full_page=True)
    yield page
    context.close()


def auth_state(hub: Hub, user: str) -> dict:
    return hub.user_model(user).get("auth_state") or {}


def test_browser_login_with_totp_gives_vos_and_account(idp_hub, alice_page):
    hub, idp = idp_hub
    model = hub.user_model("alice")
    assert sorted(model["groups"]) == ["ml-team", "physics"]
    offer = alice_page.request.get(hub.url + "/hub/api/hpcgate/offer").json()
    assert sorted(s["name"] for s in offer["systems"]) == ["gpu", "phys"]
    form = alice_page.content()
    assert "ML system" in form and "Astronomy system" not in form
    state = auth_state(hub, "alice")
    assert state["hpcgate_account"] == "hpcg-alice"
    assert state["hpcgate"]["via"] == "oidc"
    # the account claim decides where alice's server runs
    r = hub.spawn("alice", {"system": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    assert (hub.state_dir / "users" / "hpcg-alice").is_dir()
    hub.stop_server("alice")


def test_totp_login_counts_as_a_second_factor_for_mfa_grants(idp_hub, alice_page):
    hub, idp = idp_hub
    record = auth_state(hub, "alice")["hpcgate_login"]
    assert record["mfa"] is True, record
    offer = alice_page.request.get(hub.url + "/hub/api/hpcgate/offer").json()
    gpu = next(s for s in offer["systems"] if s["name"] == "gpu")
    assert [p["name"] for p in gpu["partitions"]] == ["interactive", "booster"]
    assert offer["withheld"] == [] and "second factor" not in alice_page.content()


def test_expired_access_token_is_refreshed_with_the_vos_of_now(idp_hub, alice_page, directory):
    hub, idp = idp_hub
    before = auth_state(hub, "alice")
    directory.remove_member("ml-team", "alice")  # the IdP publishes entitlements from here
    try:
        time.sleep(TOKEN_LIFETIME + 1)  # glewlwyd's access token has expired now

        def refreshed():
            alice_page.goto(hub.url + "/hub/home")  # an authenticated request: the hub refreshes
            after = auth_state(hub, "alice")
            return after if after["access_token"] != before["access_token"] else None

        after = wait_for(refreshed, 30, "the hub to refresh alice's tokens")
        assert after["hpcgate"]["expires_at"] > time.time()
        assert after["refresh_token"] and after["hpcgate_account"] == "hpcg-alice"
        # the VO taken away at the provider is gone from the hub, and so is its system
        assert hub.user_model("alice")["groups"] == ["physics"]
        offer = alice_page.request.get(hub.url + "/hub/api/hpcgate/offer").json()
        assert [s["name"] for s in offer["systems"]] == ["phys"]
    finally:
        directory.add_member("ml-team", "alice")


def test_secrets_stay_out_of_argv_logs_and_readable_files(idp_hub, alice_page, directory):
    hub, idp = idp_hub
    state = auth_state(hub, "alice")
    secrets_ = {
        "client secret": idp.client_secret_file.read_text().strip(),
        "access token": state["access_token"],
        "refresh token": state["refresh_token"],
        **{f"TOTP seed of {u}": idp.totp_seed(u) for u in ("alice", "bob", "carol")},
        "bind password": directory.service_password_file.read_text().strip(),
    }
    logs = hub.log_tail(10**7) + idp.log_file.read_text(errors="replace")
    assert_secrets_hidden(secrets_, logs, (hub.state_dir, idp.root), running=("glewlwyd", "jupyterhub"))


def test_logout_ends_the_hub_session(idp_hub, alice_page):
    hub, idp = idp_hub
    assert alice_page.request.get(hub.url + "/hub/api/hpcgate/offer").status == 200
    alice_page.goto(hub.url + "/hub/logout")
    # JupyterHub cleared its cookie and sent the browser on to the provider's end_session
    assert alice_page.url.startswith(idp.url), alice_page.url
    assert alice_page.request.get(hub.url + "/hub/api/hpcgate/offer").status == 403
