"""Whether a login used a second factor: the IdP's ``amr``/``acr`` claims, kept in auth_state.

:class:`~.oidc.IdPAuthenticator` records at every login and refresh
``auth_state["hpcgate_login"] = {"amr": [...], "acr": "...", "mfa": bool}`` from the ID
token (and the userinfo answer, where a provider puts them there). The ID token is read
without checking its signature: the hub received it straight from the provider's token
endpoint in the authorization code flow (OpenID Connect Core 3.1.3.7: the TLS channel
authenticates the provider), and it is never taken from the browser.

:func:`used_second_factor` is what grants with ``mfa: true`` ask; it trusts the record
only while hpcgate's mark on the auth_state is valid (:mod:`.stamp`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .stamp import StaleLogin, check

KEY = "hpcgate_login"

#: RFC 8176 method references that are a factor beyond a password (plus ``mfa`` itself).
SECOND_FACTOR_AMR = ("mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc")


def id_token_claims(id_token: Any) -> dict[str, Any]:
    """The payload of a compact JWS (``header.payload.signature``); ``{}`` if it is not one."""
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        return {}
    payload = id_token.split(".")[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def login_record(
    sources: Iterable[Mapping[str, Any]], amr_values: Iterable[str], acr_values: Iterable[str]
) -> dict[str, Any]:
    """``{"amr", "acr", "mfa"}`` from the first source naming each claim.

    ``mfa`` is true when an ``amr`` value is one of ``amr_values`` or the ``acr`` is one
    of ``acr_values``.
    """
    amr: list[str] = []
    acr = ""
    for claims in sources:
        if not amr and claims.get("amr"):
            raw = claims["amr"]
            amr = [raw] if isinstance(raw, str) else [v for v in raw if isinstance(v, str)]
        if not acr and isinstance(claims.get("acr"), str):
            acr = claims["acr"]
    mfa = bool(set(amr) & set(amr_values)) or (bool(acr) and acr in set(acr_values))
    return {"amr": amr, "acr": acr, "mfa": mfa}


def used_second_factor(auth_state: Mapping[str, Any] | None) -> bool:
    """True if the login recorded in ``auth_state`` used a second factor and is still valid."""
    record = (auth_state or {}).get(KEY)
    if not isinstance(record, Mapping) or record.get("mfa") is not True:
        return False
    try:
        check(auth_state)
    except StaleLogin:
        return False
    return True
