"""Who a hub user is: logins through the centre's directory (LDAP) or IdP (OIDC), and
the user's account on each system.

- :mod:`.accounts`: :class:`~.accounts.AccountResolver`, the account sources (hub name,
  ``auth_state``, map file, ldap); what an account name may be
  (:class:`hpcgate.remote.AccountName`) is decided by :mod:`hpcgate.remote`;
- :mod:`.names`: one canonical form for login names (refuses look-alikes);
- :mod:`.stamp`: the mark hpcgate's authenticators put on ``auth_state`` (who wrote it,
  until when it may be trusted), checked by the account sources;
- :mod:`.ldap`: :class:`~.ldap.DirectoryAuthenticator` (jupyterhub-ldapauthenticator
  with the user's directory groups as JupyterHub groups at every login);
- :mod:`.oidc`: :class:`~.oidc.IdPAuthenticator` (OAuthenticator's generic OIDC login
  with entitlement claims as JupyterHub groups and a claim as the account);
- :mod:`.settings`: the identity file of ``hpcgate up --auth ldap|oidc`` and
  :func:`~.settings.configure`, which turns it into JupyterHub configuration.
"""
