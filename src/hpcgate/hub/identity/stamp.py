"""The mark hpcgate's authenticators put on ``auth_state``, and its check.

``auth_state["hpcgate"] = {"via": "ldap" | "oidc", "expires_at": <unix time>}`` is
written at every login and every refresh (``refresh_user``). An account source that
reads ``auth_state`` trusts it only while the mark is there, names the expected
authenticator, and has not expired: a state written by something else, or one left
from a login long ago whose refresh failed, is refused with a sentence that tells the
user to log in again. JupyterHub stores ``auth_state`` encrypted (``JUPYTERHUB_CRYPT_KEY``)
and refreshes it before each spawn (``refresh_pre_spawn``), so a valid user always
presents a fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

KEY = "hpcgate"


class StaleLogin(ValueError):
    """The auth_state cannot be trusted (missing, foreign or expired mark)."""


def stamp(via: str, lifetime: float, now: float | None = None) -> dict[str, Any]:
    """The mark for a login through ``via`` valid for ``lifetime`` seconds."""
    return {"via": via, "expires_at": (now or time.time()) + lifetime}


def check(auth_state: Mapping[str, Any] | None, via: str | None = None, now: float | None = None) -> None:
    """Raise :class:`StaleLogin` unless ``auth_state`` carries a valid mark.

    ``via``: the authenticator the mark must name (``None``: any of hpcgate's).
    """
    mark = (auth_state or {}).get(KEY)
    if not isinstance(mark, Mapping):
        raise StaleLogin("the login's auth_state was not written by hpcgate's authenticator")
    if via is not None and mark.get("via") != via:
        raise StaleLogin(f"the login's auth_state comes from {mark.get('via')!r}, not {via!r}")
    expires = mark.get("expires_at")
    if not isinstance(expires, (int, float)) or expires < (now or time.time()):
        raise StaleLogin("the login's auth_state has expired and was not refreshed")
