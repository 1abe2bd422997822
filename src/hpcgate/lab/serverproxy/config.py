"""``c.ServerProxy.*``: jupyter-server-proxy's configuration, read by hpcgate.lab."""

from __future__ import annotations

import warnings
from typing import Any

from traitlets import Callable, Dict, List, Unicode, Union, default, observe
from traitlets.config import Configurable


class ServerProxy(Configurable):
    """jupyter-server-proxy's options; hpcgate.lab honours each of them.

    ``c.HPCGateLab.host_allowlist``, when set, wins over ``host_allowlist`` here.
    """

    servers = Dict(
        {},
        help="""Server processes by name, with jupyter-server-proxy's keys (see
        :mod:`hpcgate.appspec`); served at ``<base>/<name>/``.""",
    ).tag(config=True)

    non_service_rewrite_response = Union(
        [Callable(), List(Callable())],
        default_value=[],
        help="""A callable or list of callables changing responses of
        ``<base>/proxy/<port>/`` (not of named servers), with the arguments of a
        server's ``rewrite_response``: ``response``, ``orig_response``, ``request``,
        ``host``, ``port``, ``path``.""",
    ).tag(config=True)

    host_allowlist = Union(
        [List(Unicode()), Callable()],
        help="""Hosts ``<base>/proxy/<host>:<port>/`` may reach: a list, or a callable
        ``(handler, host) -> bool``. Default: localhost and 127.0.0.1.""",
    ).tag(config=True)

    @default("host_allowlist")
    def _default_host_allowlist(self) -> list[str]:
        return ["localhost", "127.0.0.1"]

    host_whitelist = Union(
        [List(Unicode()), Callable()],
        help="Deprecated since jupyter-server-proxy 3.0.0: the old name of ``host_allowlist``.",
    ).tag(config=True)

    @observe("host_whitelist")
    def _host_whitelist_deprecated(self, change: Any) -> None:
        if self.host_allowlist != change.new:
            warnings.warn(
                f"{type(self).__name__}.host_whitelist is deprecated in jupyter-server-proxy 3.0.0, "
                f"use {type(self).__name__}.host_allowlist instead",
                UserWarning,
                stacklevel=2,
            )
            self.host_allowlist = change.new

    def rewriters(self) -> list[Any]:
        """``non_service_rewrite_response`` as a list."""
        value = self.non_service_rewrite_response
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def allowlist_configured(self) -> bool:
        """Whether the config names ``host_allowlist`` or ``host_whitelist``."""
        cfg = self.config.get("ServerProxy", {})
        return "host_allowlist" in cfg or "host_whitelist" in cfg
