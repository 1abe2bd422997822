"""Which account a hub user has on a system (``accounts:`` of a catalog system).

Four sources (:class:`hpcgate.catalog.AccountMapping`):

- ``hub_name``: the JupyterHub user name is the account name;
- ``auth_state``: a key of the user's ``auth_state`` (set by the authenticator, e.g. the
  ``preferred_username`` claim of an OIDC login);
- ``map_file``: a YAML or JSON mapping ``hub name -> account`` kept by the admins,
  re-read when it changes;
- ``ldap``: an attribute of the user's directory entry (``attribute: uid``), as the
  directory login (:mod:`hpcgate.hub.identity.ldap`) read it at login and at its last
  refresh.

``auth_state`` is trusted only as hpcgate's authenticators marked it
(:mod:`hpcgate.hub.identity.stamp`): source ``ldap`` needs the directory login's mark;
for source ``auth_state`` a mark, when present, must not have expired (other
authenticators write none).

Contract: :meth:`AccountResolver.account` returns an :class:`~hpcgate.remote.AccountName`
(checked once, here: safe in a path and a command line), or raises
:class:`AccountError` whose message tells the user what to do. Admin mistakes (a
missing or broken map file) are logged with the config key and the file name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import yaml

from ...catalog import AccountMapping
from ...files import ReloadingFile
from ...remote import AccountName
from . import stamp

log = logging.getLogger("hpcgate.accounts")


class AccountError(ValueError):
    """No usable account for this user on this system; the message is for the user."""


def _load_map_file(path: str) -> dict[str, str]:
    """A YAML or JSON mapping ``hub name -> account``; :class:`OSError` with a sentence."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # JSON is YAML too
    except OSError as exc:
        raise OSError(f"cannot read the account map file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise OSError(f"the account map file {path} is not valid YAML or JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise OSError(f"the account map file {path} must map hub user names to account names")
    return dict(data)


class _MapFile:
    """The mapping file, re-read when its modification time, size or inode change."""

    def __init__(self, path: str):
        self.path = path
        self._file = ReloadingFile(path, _load_map_file)

    def get(self) -> dict[str, str]:
        try:
            return self._file.get()
        except OSError as exc:
            if exc.filename is None:
                raise  # already a sentence (_load_map_file)
            raise OSError(f"cannot read the account map file {self.path}: {exc.strerror}") from exc


class AccountResolver:
    """Resolves account names for one system; one instance per system (owned by HPCGate)."""

    def __init__(self, system_name: str, mapping: AccountMapping):
        self.system_name = system_name
        self.mapping = mapping
        self._map_file = _MapFile(os.path.expanduser(mapping.map_file)) if mapping.map_file else None

    @property
    def needs_auth_state(self) -> bool:
        return self.mapping.source in ("auth_state", "ldap")

    def _trusted(self, hub_name: str, auth_state: Mapping[str, Any] | None, via: str | None) -> None:
        try:
            stamp.check(auth_state, via)
        except stamp.StaleLogin as exc:
            log.warning("systems.%s.accounts: not trusting the auth_state of %s: %s", self.system_name, hub_name, exc)
            raise AccountError(
                f"Your login is too old to tell hpcgate your account on {self.system_name}. "
                "Log out and log in again."
            ) from exc

    def account(self, hub_name: str, auth_state: Mapping[str, Any] | None = None) -> AccountName:
        """The account of ``hub_name`` on this system; :class:`AccountError` if none."""
        source = self.mapping.source
        if source == "hub_name":
            raw: Any = hub_name
        elif source == "ldap":
            self._trusted(hub_name, auth_state, "ldap")
            attribute = self.mapping.attribute or ""
            values = ((auth_state or {}).get("user_attributes") or {}).get(attribute) or []
            raw = values[0] if isinstance(values, list) and len(values) == 1 else None
            if raw is None:
                log.warning(
                    "systems.%s.accounts: the directory entry of %s has %s value(s) of %r (one needed)",
                    self.system_name, hub_name, len(values) if isinstance(values, list) else "no", attribute,
                )
                raise AccountError(
                    f"The directory does not name your account on {self.system_name}. "
                    "Ask the hub's admins to add it to your directory entry."
                )
        elif source == "auth_state":
            if (auth_state or {}).get(stamp.KEY) is not None:
                self._trusted(hub_name, auth_state, None)
            key = self.mapping.key or ""
            raw = (auth_state or {}).get(key)
            if raw is None:
                log.warning(
                    "systems.%s.accounts: auth_state of %s has no key %r",
                    self.system_name, hub_name, key,
                )
                raise AccountError(
                    f"Your login did not tell hpcgate your account on {self.system_name}. "
                    "Log out, log in again, and ask the hub's admins if this persists."
                )
        else:
            assert self._map_file is not None
            try:
                raw = self._map_file.get().get(hub_name)
            except OSError as exc:
                log.error("systems.%s.accounts.map_file: %s", self.system_name, exc)
                raise AccountError(
                    f"hpcgate cannot look up your account on {self.system_name} right now. "
                    "Try again later or tell the hub's admins."
                ) from exc
            if raw is None:
                raise AccountError(
                    f"You have no account on {self.system_name} yet. Apply for one, or ask the "
                    "hub's admins to add your user name to the account map."
                )
        try:
            return AccountName(str(raw))
        except ValueError as exc:
            log.error("systems.%s.accounts (%s): %s", self.system_name, source, exc)
            raise AccountError(
                f"Your account name {str(raw)[:40]!r} on {self.system_name} cannot be used by "
                "hpcgate. Ask the hub's admins for an account mapping."
            ) from exc
