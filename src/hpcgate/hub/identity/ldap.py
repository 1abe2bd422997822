"""Log in with the directory password; the directory's groups are the user's VOs.

:class:`DirectoryAuthenticator` is jupyterhub-ldapauthenticator's ``LDAPAuthenticator``
(which checks the password by binding as the user) plus what a gateway needs:

- the login name is put in its canonical form first (:mod:`.names`): a name differing
  only in case or Unicode form is the same directory user, never another one; the hub
  name is the directory's own ``uid`` (``use_lookup_dn_username``);
- the user's groups (``posixGroup`` ``memberUid`` or ``groupOfNames`` ``member``,
  :attr:`DirectoryAuthenticator.group_filter`) become the user's JupyterHub groups at
  every login and every refresh (``manage_groups``), so a group removed in the directory
  removes what it granted at the next login;
- ``auth_state`` holds the entry's attributes named in ``auth_state_attributes`` (the
  ``ldap`` account source reads the account from there) and hpcgate's mark
  (:mod:`.stamp`); :meth:`DirectoryAuthenticator.refresh_user` re-reads the entry
  with the service account, and a user removed from the directory must log in again.

The service account's password comes from :attr:`DirectoryAuthenticator.bind_password_file`
(or ``$HPCGATE_LDAP_BIND_PASSWORD``): it never appears on a command line or in a log.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from traitlets import Bool, Dict, Int, Unicode, default

from .base import GatewayLogin
from .names import canonical_login
from .stamp import KEY, stamp

BIND_PASSWORD_ENV = "HPCGATE_LDAP_BIND_PASSWORD"


class DirectoryAuthenticator(GatewayLogin, LDAPAuthenticator):
    """LDAP login with directory groups as JupyterHub groups (see the module doc)."""

    bind_password_file = Unicode(
        "",
        config=True,
        help="""File holding the password of ``lookup_dn_search_user`` (the hub's service
        account in the directory); the whole file minus surrounding whitespace. Keep it
        0600. When empty, the environment variable HPCGATE_LDAP_BIND_PASSWORD is used.""",
    )
    group_search_base = Unicode(
        "",
        config=True,
        help="Base DN under which the user's groups are searched (e.g. ou=groups,dc=example,dc=org).",
    )
    group_filter = Unicode(
        "(|(&(objectClass=posixGroup)(memberUid={uid}))(&(objectClass=groupOfNames)(member={dn})))",
        config=True,
        help="""LDAP filter finding the groups the user is a member of; ``{uid}`` is the
        user's uid and ``{dn}`` the user's DN, both escaped for a filter.""",
    )
    group_name_attribute = Unicode(
        "cn", config=True, help="Attribute of a group entry that names the JupyterHub group (VO)."
    )
    group_map = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Directory group name -> JupyterHub group (VO) name. Groups not listed keep
        their directory name; map a group to an empty string to ignore it.""",
    )
    login_lifetime = Int(
        3600,
        config=True,
        help="""Seconds for which a login's auth_state is trusted by hpcgate's account
        sources without a refresh; refresh_user renews it (before every spawn).""",
    )

    # ldapauthenticator's and JupyterHub's defaults that a gateway wants otherwise
    @default("lookup_dn")
    def _lookup_dn_default(self) -> bool:
        return True

    @default("use_lookup_dn_username")
    def _use_lookup_dn_username_default(self) -> bool:
        return True

    @default("user_attribute")
    def _user_attribute_default(self) -> str:
        return "uid"

    @default("lookup_dn_user_dn_attribute")
    def _lookup_dn_user_dn_attribute_default(self) -> str:
        return "uid"

    @default("lookup_dn_search_filter")
    def _lookup_dn_search_filter_default(self) -> str:
        return "(&(objectClass=posixAccount)({login_attr}={login}))"

    @default("valid_username_regex")
    def _valid_username_regex_default(self) -> str:
        return r"^[a-z][a-z0-9._-]{0,63}$"

    @default("lookup_dn_search_password")
    def _bind_password_default(self) -> str:
        if self.bind_password_file:
            with open(os.path.expanduser(self.bind_password_file), encoding="utf-8") as f:
                return f.read().strip()
        return os.environ.get(BIND_PASSWORD_ENV, "")

    @default("auth_refresh_age")
    def _auth_refresh_age_default(self) -> int:
        return 300

    allow_all_directory_users = Bool(
        True,
        config=True,
        help="""Every user who can bind to the directory may log in (what they may launch is
        still decided by their groups in the catalog). Set False to use allowed_users or
        allowed_groups instead.""",
    )

    @default("allow_all")
    def _allow_all_default(self) -> bool:
        return self.allow_all_directory_users

    # --- the directory as the hub's service account sees it -------------------------

    def _service_connection(self) -> ldap3.Connection:
        conn = self.get_connection(self.lookup_dn_search_user, self.lookup_dn_search_password)
        if conn is None:
            raise RuntimeError(
                f"LDAPAuthenticator.lookup_dn_search_user {self.lookup_dn_search_user!r}: the "
                "directory refused the service account's bind (check bind_password_file)"
            )
        return conn

    def directory_view(self, uid: str) -> tuple[list[str], dict[str, list[Any]]] | None:
        """(VO names, auth_state attributes) of directory user ``uid``; ``None`` if gone.

        Blocking (ldap3): call it in a thread.
        """
        conn = self._service_connection()
        try:
            attributes = list(dict.fromkeys([self.lookup_dn_user_dn_attribute, *self.auth_state_attributes]))
            conn.search(
                search_base=self.user_search_base,
                search_scope=ldap3.SUBTREE,
                search_filter=self.lookup_dn_search_filter.format(
                    login_attr=self.user_attribute, login=escape_filter_chars(uid)
                ),
                attributes=attributes,
            )
            if len(conn.entries) != 1:
                return None
            entry = conn.entries[0]
            values = entry.entry_attributes_as_dict
            user_attributes = {a: list(values.get(a, [])) for a in self.auth_state_attributes}
            conn.search(
                search_base=self.group_search_base or self.user_search_base,
                search_scope=ldap3.SUBTREE,
                search_filter=self.group_filter.format(
                    uid=escape_filter_chars(uid), dn=escape_filter_chars(entry.entry_dn)
                ),
                attributes=[self.group_name_attribute],
            )
            groups = set()
            for group in conn.entries:
                for name in group.entry_attributes_as_dict.get(self.group_name_attribute, []):
                    mapped = self.group_map.get(str(name), str(name))
                    if mapped:
                        groups.add(mapped)
            return sorted(groups), user_attributes
        finally:
            conn.unbind()

    def _auth_model(self, name: str, view: tuple[list[str], dict[str, list[Any]]], base: dict | None) -> dict:
        groups, attributes = view
        auth_state = dict(base or {})
        auth_state["user_attributes"] = attributes
        auth_state["ldap_groups"] = groups
        auth_state[KEY] = stamp("ldap", self.login_lifetime)
        return {"name": name, "groups": groups, "auth_state": auth_state}

    # --- JupyterHub's hooks -----------------------------------------------------------

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> dict | None:
        try:
            login = canonical_login(data.get("username") or "")
        except ValueError:
            self.log.warning("LDAP login refused: the user name is not of the accepted form")
            return None
        result = await super().authenticate(handler, {**data, "username": login})
        if not result:
            return None
        try:
            name = canonical_login(result["name"])
        except ValueError:
            self.log.warning("LDAP login refused: the directory's uid for %r is not a usable hub name", login)
            return None
        view = await asyncio.to_thread(self.directory_view, name)
        if view is None:
            return None
        self.log.info("LDAP login of %s with groups %s", name, ", ".join(view[0]) or "(none)")
        return self._auth_model(name, view, result.get("auth_state"))

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> bool | dict:
        """Re-read the user's groups and attributes; ``False`` (log in again) if gone.

        When the directory cannot be asked, the login stays as it was (``True``): its
        auth_state mark expires after :attr:`login_lifetime`, and the account sources
        refuse it from then on.
        """
        try:
            view = await asyncio.to_thread(self.directory_view, user.name)
        except (LDAPException, RuntimeError) as exc:
            self.log.warning("cannot refresh %s from the directory: %s", user.name, exc)
            return True
        if view is None:
            self.log.warning("%s is no longer in the directory: a new login is needed", user.name)
            return False
        state = await user.get_auth_state() if self.enable_auth_state else None
        return self._auth_model(user.name, view, state)
