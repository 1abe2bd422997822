"""What hpcgate's logins share: groups from the login, auth_state kept and refreshed.

:class:`GatewayLogin` is mixed in before the upstream authenticator class
(``class DirectoryAuthenticator(GatewayLogin, LDAPAuthenticator)``). It only changes
defaults; an admin can still set each of them.
"""

from __future__ import annotations

from jupyterhub.auth import Authenticator
from traitlets import default


class GatewayLogin(Authenticator):
    """Defaults for a gateway login (see the module doc)."""

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        # the login's groups are the user's VOs, replaced at every login and refresh
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        # a spawn never uses an account from an auth_state older than the last refresh
        return True
