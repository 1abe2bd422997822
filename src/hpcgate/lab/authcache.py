"""Who the Jupyter server authenticated a moment ago, for the proxy's small GETs.

A page of an app (RStudio, VS Code, a dashboard) loads hundreds of small files, each
one request the Jupyter server authenticates anew: the signed cookie decoded and its
HMAC checked, JupyterHub's token looked up in HubAuth's cache, its scopes checked.
:class:`AuthCache` remembers, for a few seconds, the identity the server's own
identity provider returned for the exact same credentials.

Contracts:

* Only what the identity provider *accepted* is remembered; a refused request is asked
  again every time, and nothing is ever accepted that the provider did not accept for
  the same credentials at most ``ttl`` seconds before. An acceptance that set a cookie
  (Jupyter signing a token into its login cookie) is not remembered either: the proxy
  (:mod:`.proxy.base`) leaves such requests on the full path, so every answer the
  provider gives stays exactly as it was.
* The key is a keyed BLAKE2b hash (a random key per process) of the request's ``Host``,
  ``Authorization`` and ``Cookie`` headers: the raw secrets are never stored, and any
  change of a credential (another user's token, a cleared or renewed cookie) is another
  key. ``Host`` is part of it because Jupyter's cookie name depends on it.
* Only ``GET`` and ``HEAD`` without a ``token`` query parameter are looked up: the
  identity providers set cookies or run XSRF checks on the others (a URL token is
  stored in a cookie; a state change needs its origin checked), so those always take
  the provider's full path. Websocket upgrades are authenticated once per connection
  anyway.
* At most ``max_entries`` identities are held (least recently used dropped first);
  entries expire ``ttl`` seconds after the provider accepted them. The extension caps
  ``ttl`` at HubAuth's own ``cache_max_age``: a revoked or expired JupyterHub token is
  refused here no later than HubAuth itself would have refused it after the same wait
  (HubAuth remembers the hub's answer for ``cache_max_age`` and invalidates by age
  only; so does this cache). ``ttl`` 0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: query arguments that carry a credential: requests with them are never looked up
_CREDENTIAL_QUERY = ("token",)


class AuthCache:
    """A bounded, expiring map from a hash of a request's credentials to its identity.

    ``clock`` is ``time.monotonic`` unless a test passes its own.
    """

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = max(float(ttl), 0.0)
        self.max_entries = max(int(max_entries), 0)
        self._clock = clock
        self._salt = os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[float, Any, bool]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def key(self, method: str | None, headers: Any, query_arguments: dict[str, Any]) -> bytes | None:
        """The cache key of a request, or None if it must take the provider's full path.

        ``headers`` is the request's :class:`~tornado.httputil.HTTPHeaders` (or any
        mapping with ``get``); ``query_arguments`` its parsed query.
        """
        if not self.enabled or method not in ("GET", "HEAD"):
            return None
        if any(name in query_arguments for name in _CREDENTIAL_QUERY):
            return None
        authorization = headers.get("Authorization", "")
        cookie = headers.get("Cookie", "")
        if not authorization and not cookie:
            return None  # nothing to remember an identity by
        h = hashlib.blake2b(key=self._salt, digest_size=32)
        for part in (headers.get("Host", ""), authorization, cookie):
            h.update(part.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        return h.digest()

    def get(self, key: bytes) -> tuple[Any, bool] | None:
        """``(user, token_authenticated)`` remembered for ``key``, or None if none is fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, user, token_authenticated = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return user, token_authenticated

    def put(self, key: bytes, user: Any, token_authenticated: bool) -> None:
        """Remember that the provider accepted ``key``'s credentials as ``user`` just now."""
        if user is None or not self.enabled:
            return
        self._entries[key] = (self._clock() + self.ttl, user, token_authenticated)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every identity."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def provider_cache_age(identity_provider: Any) -> float | None:
    """How long the identity provider itself caches the hub's answers (HubAuth's
    ``cache_max_age``), or None if it caches nothing of the kind (plain Jupyter tokens,
    whose signed cookies carry their own expiry checked on each full authentication)."""
    hub_auth = getattr(identity_provider, "hub_auth", None)
    age = getattr(hub_auth, "cache_max_age", None)
    return float(age) if isinstance(age, (int, float)) else None
