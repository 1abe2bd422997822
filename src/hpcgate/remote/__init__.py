"""SSH, in one place: pooled connections, who logs in where, and the tunnels.

- :mod:`.pool`: :class:`SSHTarget`, :class:`SSHPool` (one connection per target, idle
  eviction), :class:`RemoteError` and :func:`describe_error`, :func:`run_local`.
- :mod:`.targets`: :class:`AccountName`, :func:`render_path`, :class:`SystemRemote`
  (a catalog system's identities turned into SSH targets; commands as users' accounts).
- :mod:`.tunnels`: :class:`TunnelManager` (one connection per system to its jump host,
  carrying every server's forward and the hub API remote forward).

Runs inside the JupyterHub process; nothing in :mod:`hpcgate.lab` imports it.
"""

from .pool import CommandFailed, CommandResult, RemoteError, SSHPool, SSHTarget, describe_error, run_local
from .targets import AccountName, SystemRemote, render_path

__all__ = [
    "AccountName",
    "CommandFailed",
    "CommandResult",
    "RemoteError",
    "SSHPool",
    "SSHTarget",
    "SystemRemote",
    "describe_error",
    "render_path",
    "run_local",
]
