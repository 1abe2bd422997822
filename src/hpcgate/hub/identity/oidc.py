"""Log in through the centre's OpenID Connect provider; entitlements are the VOs.

:class:`IdPAuthenticator` is OAuthenticator's ``GenericOAuthenticator`` (authorization
code flow, tokens in ``auth_state``, ``refresh_user`` exchanging the refresh token when
the access token no longer works) plus:

- endpoints from the provider's discovery document (``issuer`` +
  ``/.well-known/openid-configuration``), read once at start;
- the hub name is the :attr:`~IdPAuthenticator.username_claim` in canonical form
  (:mod:`.names`): a name differing only in case or Unicode form is the same user, a
  name that folds to nothing usable is refused;
- entitlement URNs in :attr:`~IdPAuthenticator.entitlements_claim` (e.g.
  ``urn:geant:example.org:group:ml-team``) become JupyterHub groups through
  :attr:`~IdPAuthenticator.entitlement_pattern` (its named group ``vo``) at every login
  and refresh; other values are ignored;
- :attr:`~IdPAuthenticator.account_claim` is copied to ``auth_state["hpcgate_account"]``
  (for a catalog system's ``accounts: {source: auth_state, key: hpcgate_account}``), and
  hpcgate's mark (:mod:`.stamp`) expires with the access token, so an account is only
  used while the provider still vouches for the login;
- ``logout_redirect_url`` defaults to the provider's ``end_session_endpoint``: logging
  out of the hub ends the hub session and sends the browser on to the provider.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any
from urllib.request import urlopen

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from traitlets import Int, List, Unicode, default, validate

from .base import GatewayLogin
from .factors import KEY as LOGIN_KEY
from .factors import SECOND_FACTOR_AMR, id_token_claims, login_record
from .names import canonical_login
from .stamp import KEY, stamp

ACCOUNT_KEY = "hpcgate_account"


class NonceLoginHandler(OAuthLoginHandler):
    """OAuthenticator's login redirect plus a fresh OIDC ``nonce`` per request.

    Providers that follow OpenID Connect strictly (glewlwyd) refuse an authorization
    request without one. The identity comes from the userinfo endpoint (with the access
    token obtained with PKCE and the state cookie), not from the ID token.
    """

    def authorize_redirect(self, *args: Any, **kwargs: Any) -> Any:
        extra = dict(kwargs.get("extra_params") or {})
        extra["nonce"] = secrets.token_urlsafe(16)
        kwargs["extra_params"] = extra
        return super().authorize_redirect(*args, **kwargs)


class IdPAuthenticator(GatewayLogin, GenericOAuthenticator):
    """OIDC login with entitlement claims as VOs (see the module doc)."""

    login_handler = NonceLoginHandler

    issuer = Unicode(
        "",
        config=True,
        help="""The provider's issuer URL. authorize_url, token_url and userdata_url default to
        the endpoints of its discovery document (<issuer>/.well-known/openid-configuration).""",
    )
    entitlements_claim = Unicode(
        "eduperson_entitlement",
        config=True,
        help="Userinfo claim listing the user's entitlement URNs (a list, or one string).",
    )
    entitlement_pattern = Unicode(
        r"^urn:geant:[^:]+:group:(?P<vo>[A-Za-z0-9._-]+)$",
        config=True,
        help="""Regular expression applied to each entitlement; its named group ``vo`` is the
        JupyterHub group (VO). Entitlements that do not match are ignored.""",
    )
    account_claim = Unicode(
        "",
        config=True,
        help="""Userinfo claim holding the user's account on the systems; stored in auth_state
        as hpcgate_account. Use a claim the user cannot edit at the provider.""",
    )
    mfa_amr_values = List(
        Unicode(),
        list(SECOND_FACTOR_AMR),
        config=True,
        help="""``amr`` values (ID token or userinfo) that mean the login used a second factor,
        as catalog grants with ``mfa: true`` require. Default: RFC 8176's methods beyond a
        password (otp, mfa, hwk, swk, sms, ...).""",
    )
    mfa_acr_values = List(
        Unicode(),
        [],
        config=True,
        help="""``acr`` values that mean the login used a second factor (for providers that
        express it as an authentication context class, e.g. a REFEDS MFA profile URI).""",
    )
    login_lifetime = Int(
        0,
        config=True,
        help="""Seconds a login's auth_state is trusted by hpcgate's account sources; 0 means
        as long as the access token is valid (its expires_in). refresh_user renews it.""",
    )

    @validate("entitlement_pattern")
    def _check_pattern(self, proposal: Any) -> str:
        try:
            compiled = re.compile(proposal.value)
        except re.error as exc:
            raise ValueError(f"IdPAuthenticator.entitlement_pattern is not a regular expression: {exc}") from exc
        if "vo" not in compiled.groupindex:
            raise ValueError("IdPAuthenticator.entitlement_pattern needs a named group (?P<vo>...)")
        return proposal.value

    def _discovery(self) -> dict[str, Any]:
        if not self.issuer:
            return {}
        cached = getattr(self, "_discovered", None)
        if cached is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            with urlopen(url, timeout=10) as r:
                cached = json.loads(r.read())
            self._discovered = cached
        return cached

    @default("authorize_url")
    def _authorize_url_default(self) -> str:
        return self._discovery().get("authorization_endpoint", "")

    @default("token_url")
    def _token_url_default(self) -> str:
        return self._discovery().get("token_endpoint", "")

    @default("userdata_url")
    def _userdata_url_default(self) -> str:
        return self._discovery().get("userinfo_endpoint", "")

    @default("logout_redirect_url")
    def _logout_redirect_default(self) -> str:
        return self._discovery().get("end_session_endpoint", "")

    @default("allow_all")
    def _allow_all_default(self) -> bool:
        return True

    @default("scope")
    def _scope_default(self) -> list[str]:
        return ["openid", "profile", "email"]

    @default("login_service")
    def _login_service_default(self) -> str:
        return "your institution"

    # --- the claims -------------------------------------------------------------------

    def user_info_to_username(self, user_info: dict[str, Any]) -> str:
        raw = super().user_info_to_username(user_info)
        try:
            return canonical_login(str(raw))
        except ValueError as exc:
            # refused: JupyterHub answers 403 for an unusable name
            from tornado.web import HTTPError

            raise HTTPError(403, f"The identity provider's user name cannot be used here: {exc}") from exc

    def vos(self, user_info: dict[str, Any]) -> list[str]:
        """VO names from the user's entitlements (see :attr:`entitlement_pattern`)."""
        raw = user_info.get(self.entitlements_claim) or []
        values = [raw] if isinstance(raw, str) else [v for v in raw if isinstance(v, str)]
        pattern = re.compile(self.entitlement_pattern)
        found = set()
        for value in values:
            m = pattern.match(value)
            if m and m.group("vo"):
                found.add(m.group("vo"))
        return sorted(found)

    async def build_auth_state_dict(self, token_info: dict[str, Any], user_info: dict[str, Any]) -> dict[str, Any]:
        state = super().build_auth_state_dict(token_info, user_info)
        if hasattr(state, "__await__"):
            state = await state
        if self.account_claim and user_info.get(self.account_claim):
            state[ACCOUNT_KEY] = str(user_info[self.account_claim])
        else:
            state.pop(ACCOUNT_KEY, None)
        lifetime = self.login_lifetime
        if not lifetime:
            try:
                lifetime = int(token_info.get("expires_in") or 300)
            except (TypeError, ValueError):
                lifetime = 300
        state[KEY] = stamp("oidc", lifetime)
        state["hpcgate_vos"] = self.vos(user_info)
        # amr/acr: the ID token from the token endpoint, else the userinfo answer
        claims = id_token_claims(token_info.get("id_token"))
        state[LOGIN_KEY] = login_record((claims, user_info), self.mfa_amr_values, self.mfa_acr_values)
        return state

    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        return set(auth_state.get("hpcgate_vos") or [])

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> bool | dict:
        """OAuthenticator's refresh; a login whose mark has expired is always re-checked."""
        state = await user.get_auth_state() if self.enable_auth_state else None
        mark = (state or {}).get(KEY) or {}
        if state and mark.get("expires_at", 0) > time.time() + 30:
            return True
        return await super().refresh_user(user, handler, **kwargs)
