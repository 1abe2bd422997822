"""The identity file of ``hpcgate up --auth ldap|oidc --identity FILE``.

A YAML file with one section, ``ldap:`` or ``oidc:``, validated here;
:func:`configure` turns it into JupyterHub configuration (authenticator class and
traits). Secrets are never in the file itself: the file names a file
(``bind_password_file``, ``client_secret_file``) or an environment variable
(``bind_password_env``, ``client_secret_env``) that holds them.

Contract: :func:`load_identity` returns a validated :class:`Identity` or raises
:class:`IdentityConfigError` whose message names the file, the key and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class IdentityConfigError(ValueError):
    """The identity file is missing, unreadable or invalid; the message says where."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Secret(_Model):
    """A secret named by file or environment variable (exactly one)."""

    def _read(self, file: str | None, env: str | None, what: str) -> str:
        if file:
            path = Path(file).expanduser()
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise IdentityConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
            if path.stat().st_mode & 0o077:
                raise IdentityConfigError(f"{what}: {path} is readable by others; chmod 600 it")
        else:
            value = os.environ.get(env or "", "")
        if not value:
            raise IdentityConfigError(f"{what}: the secret is empty")
        return value


class LDAPSettings(_Secret):
    #: ``ldap://host:port`` or ``ldaps://host:port``
    url: str = Field(pattern=r"^ldaps?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?$")
    #: base DN of the people (posixAccount entries)
    people: str
    #: base DN of the groups (default: people)
    groups: str | None = None
    #: the hub's service account (reads people and groups)
    bind_dn: str
    bind_password_file: str | None = None
    bind_password_env: str | None = None
    #: STARTTLS before binding (for ldap:// URLs outside loopback)
    starttls: bool = False
    #: entry attributes kept in auth_state (the ``ldap`` account source reads them)
    attributes: list[str] = ["uid"]
    #: directory group -> VO (JupyterHub group); unmapped groups keep their name
    group_map: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_secret(self) -> LDAPSettings:
        if bool(self.bind_password_file) == bool(self.bind_password_env):
            raise ValueError("give exactly one of bind_password_file, bind_password_env")
        return self


class OIDCSettings(_Secret):
    #: the provider's issuer URL (its discovery document is <issuer>/.well-known/openid-configuration)
    issuer: str = Field(pattern=r"^https?://\S+$")
    client_id: str
    client_secret_file: str | None = None
    client_secret_env: str | None = None
    #: the hub's public URL + /hub/oauth_callback
    callback_url: str = Field(pattern=r"^https?://\S+$")
    scopes: list[str] = ["openid", "profile", "email"]
    #: claim naming the hub user
    username_claim: str = "preferred_username"
    #: claim holding the account on the systems (stored in auth_state as hpcgate_account)
    account_claim: str | None = None
    #: claim with the entitlement URNs
    groups_claim: str = "eduperson_entitlement"
    #: regular expression with a named group ``vo`` that picks the VO out of an entitlement
    group_pattern: str = r"^urn:geant:[^:]+:group:(?P<vo>[A-Za-z0-9._-]+)$"
    #: verify the provider's TLS certificate
    verify_tls: bool = True

    @model_validator(mode="after")
    def _one_secret(self) -> OIDCSettings:
        if bool(self.client_secret_file) == bool(self.client_secret_env):
            raise ValueError("give exactly one of client_secret_file, client_secret_env")
        return self


class Identity(_Model):
    ldap: LDAPSettings | None = None
    oidc: OIDCSettings | None = None

    @property
    def kind(self) -> Literal["ldap", "oidc"]:
        return "ldap" if self.ldap else "oidc"

    @model_validator(mode="after")
    def _one(self) -> Identity:
        if bool(self.ldap) == bool(self.oidc):
            raise ValueError("give exactly one section: ldap or oidc")
        return self


def load_identity(path: str | os.PathLike[str]) -> Identity:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise IdentityConfigError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise IdentityConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Identity.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise IdentityConfigError(f"{path}: {problems}") from exc


def configure(c: Any, identity: Identity) -> None:
    """Set JupyterHub config ``c`` for the identity's directory or IdP.

    Secrets are read here (in the hub process) into traits: never into argv or a file.
    """
    c.Authenticator.enable_auth_state = True
    c.Authenticator.manage_groups = True
    c.Authenticator.refresh_pre_spawn = True
    if identity.ldap:
        s = identity.ldap
        url = urlsplit(s.url)
        c.JupyterHub.authenticator_class = "hpcgate.hub.identity.ldap.DirectoryAuthenticator"
        a = c.DirectoryAuthenticator
        a.server_address = url.hostname or ""
        if url.port:
            a.server_port = url.port
        a.tls_strategy = "on_connect" if url.scheme == "ldaps" else ("before_bind" if s.starttls else "insecure")
        a.user_search_base = s.people
        a.group_search_base = s.groups or s.people
        a.lookup_dn_search_user = s.bind_dn
        a.lookup_dn_search_password = s._read(s.bind_password_file, s.bind_password_env, "ldap.bind_password")
        a.auth_state_attributes = list(s.attributes)
        a.group_map = dict(s.group_map)
    else:
        o = identity.oidc
        assert o is not None
        c.JupyterHub.authenticator_class = "hpcgate.hub.identity.oidc.IdPAuthenticator"
        a = c.IdPAuthenticator
        a.issuer = o.issuer
        a.client_id = o.client_id
        a.client_secret = o._read(o.client_secret_file, o.client_secret_env, "oidc.client_secret")
        a.oauth_callback_url = o.callback_url
        a.scope = list(o.scopes)
        a.username_claim = o.username_claim
        a.account_claim = o.account_claim or ""
        a.entitlements_claim = o.groups_claim
        a.entitlement_pattern = o.group_pattern
        a.validate_server_cert = o.verify_tls
