"""Identity pieces without servers: names, the auth_state mark, account sources, settings."""

from __future__ import annotations

import os
import time

import pytest

from hpcgate.catalog import AccountMapping
from hpcgate.hub.identity import stamp
from hpcgate.hub.identity.accounts import AccountError, AccountResolver
from hpcgate.hub.identity.names import canonical_login
from hpcgate.hub.identity.oidc import IdPAuthenticator
from hpcgate.hub.identity.settings import IdentityConfigError, configure, load_identity


@pytest.mark.parametrize(
    "typed, canonical",
    [("alice", "alice"), ("Alice", "alice"), (" ALICE ", "alice"), ("\uff41\uff4c\uff49\uff43\uff45", "alice"),
     ("stra\u00dfe", "strasse"), ("j.doe-2", "j.doe-2")],
)  # fmt: skip
def test_case_and_compatibility_forms_fold_to_one_name(typed, canonical):
    assert canonical_login(typed) == canonical


@pytest.mark.parametrize(
    "typed",
    ["\u0430lice", "ali\u0307ce", "alice\u200b", "\u0131lice", "", "1alice", "al ice", "alice/../bob", "al*"],
)
def test_look_alike_names_are_refused(typed):
    with pytest.raises(ValueError, match="letters a-z"):
        canonical_login(typed)


def _ldap_state(account="hpcg-alice", via="ldap", expires_in=60.0):
    return {
        "user_attributes": {"employeeType": [account] if account else []},
        stamp.KEY: {"via": via, "expires_at": time.time() + expires_in},
    }


def test_ldap_account_source_reads_the_directory_attribute():
    resolver = AccountResolver("gpu", AccountMapping(source="ldap", attribute="employeeType"))
    assert resolver.needs_auth_state
    assert resolver.account("alice", _ldap_state()) == "hpcg-alice"


@pytest.mark.parametrize(
    "state, why",
    [
        (None, "no auth_state"),
        ({"user_attributes": {"employeeType": ["hpcg-bob"]}}, "forged: no mark"),
        (_ldap_state(via="oidc"), "another authenticator's state"),
        (_ldap_state(expires_in=-1), "stale: the mark expired"),
        (_ldap_state(account=""), "no value"),
        ({**_ldap_state(), "user_attributes": {"employeeType": ["a", "b"]}}, "two values"),
        (_ldap_state(account="../root"), "unsafe account name"),
    ],
)
def test_ldap_account_source_refuses_untrusted_state(state, why):
    resolver = AccountResolver("gpu", AccountMapping(source="ldap", attribute="employeeType"))
    with pytest.raises(AccountError):
        resolver.account("alice", state)


def test_auth_state_source_checks_the_mark_when_present():
    resolver = AccountResolver("gpu", AccountMapping(source="auth_state", key="hpcgate_account"))
    fresh = {"hpcgate_account": "hpcg-alice", stamp.KEY: stamp.stamp("oidc", 60)}
    assert resolver.account("alice", fresh) == "hpcg-alice"
    stale = {"hpcgate_account": "hpcg-alice", stamp.KEY: stamp.stamp("oidc", 60, now=time.time() - 120)}
    with pytest.raises(AccountError, match="Log out and log in again"):
        resolver.account("alice", stale)
    # other authenticators write no mark: their auth_state is used as before
    assert resolver.account("alice", {"hpcgate_account": "hpcg-alice"}) == "hpcg-alice"


def test_ldap_source_needs_an_attribute():
    with pytest.raises(ValueError, match="needs attribute"):
        AccountMapping(source="ldap")


def test_entitlements_map_to_vos_through_the_configured_pattern():
    a = IdPAuthenticator(client_id="x", client_secret="y")
    info = {
        "eduperson_entitlement": [
            "urn:geant:example.org:group:ml-team",
            "urn:geant:example.org:group:physics",
            "urn:geant:example.org:group:bad name",
            "urn:mace:other:thing",
            42,
        ]
    }
    assert a.vos(info) == ["ml-team", "physics"]
    assert a.vos({"eduperson_entitlement": "urn:geant:x:group:astro"}) == ["astro"]
    a.entitlement_pattern = r"^urn:mace:(?P<vo>[a-z]+):thing$"
    assert a.vos(info) == ["other"]
    with pytest.raises(Exception, match="named group"):
        a.entitlement_pattern = "^urn:(.*)$"


def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_identity_file_errors_name_the_key(tmp_path):
    secret = _write(tmp_path / "bind", "s3cret")
    both = _write(
        tmp_path / "both.yaml",
        f"ldap: {{url: 'ldap://h', people: 'ou=p', bind_dn: 'cn=h', bind_password_file: {secret}, bind_password_env: X}}",
    )
    with pytest.raises(IdentityConfigError, match="exactly one of bind_password_file"):
        load_identity(both)
    with pytest.raises(IdentityConfigError, match="exactly one section"):
        load_identity(_write(tmp_path / "none.yaml", "{}"))
    with pytest.raises(IdentityConfigError, match=r"oidc\.issuer"):
        load_identity(_write(tmp_path / "bad.yaml", "oidc: {issuer: 'not a url', client_id: c, client_secret_env: S, callback_url: 'http://h/cb'}"))
    with pytest.raises(IdentityConfigError, match=r"ldap\.bindpw: Extra inputs"):
        load_identity(_write(tmp_path / "typo.yaml", "ldap: {url: 'ldap://h', people: p, bind_dn: d, bind_password_env: X, bindpw: y}"))


def test_secrets_are_read_from_private_files_or_env_only(tmp_path, monkeypatch):
    class C(dict):
        def __getattr__(self, name):
            return self.setdefault(name, C())

        def __setattr__(self, name, value):
            self[name] = value

    loose = _write(tmp_path / "loose", "s3cret", 0o644)
    ident = _write(
        tmp_path / "ldap.yaml",
        f"ldap: {{url: 'ldaps://ldap.example.org:636', people: 'ou=p', bind_dn: 'cn=h', bind_password_file: {loose}}}",
    )
    with pytest.raises(IdentityConfigError, match="readable by others"):
        configure(C(), load_identity(ident))
    os.chmod(loose, 0o600)
    c = C()
    configure(c, load_identity(ident))
    a = c.DirectoryAuthenticator
    assert (a.server_address, a.server_port, a.tls_strategy) == ("ldap.example.org", 636, "on_connect")
    assert a.lookup_dn_search_password == "s3cret"
    assert c.Authenticator.manage_groups is True
    monkeypatch.setenv("HPCGATE_TEST_SECRET", "from-env")
    oidc = _write(
        tmp_path / "oidc.yaml",
        "oidc: {issuer: 'https://idp.example.org', client_id: hub, client_secret_env: HPCGATE_TEST_SECRET, "
        "callback_url: 'https://hub.example.org/hub/oauth_callback', account_claim: uid}",
    )
    c = C()
    configure(c, load_identity(oidc))
    assert c.IdPAuthenticator.client_secret == "from-env"
    assert c.IdPAuthenticator.account_claim == "uid"
    assert c.JupyterHub.authenticator_class.endswith("IdPAuthenticator")


def test_hpcgate_up_refuses_auth_without_a_matching_identity_file(tmp_path, capsys):
    from hpcgate.cli import main

    assert main(["up", "--auth", "ldap", "--state-dir", str(tmp_path / "s")]) == 2
    assert "--auth ldap needs --identity FILE" in capsys.readouterr().err
    ident = _write(tmp_path / "o.yaml", "oidc: {issuer: 'https://i', client_id: c, client_secret_env: S, callback_url: 'https://h/cb'}")
    assert main(["up", "--auth", "ldap", "--identity", str(ident), "--state-dir", str(tmp_path / "s")]) == 2
    assert "configures oidc" in capsys.readouterr().err
    assert not (tmp_path / "s" / "crypt-key").exists()
