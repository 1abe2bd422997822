"""``python -m hpcgate.hub.app``: JupyterHub with hpcgate's routes that must come first.

:class:`HubApp` is JupyterHub itself (every option, subcommand and config file works
the same) with one change: :func:`hpcgate.hub.stops.handlers` are matched before
JupyterHub's own routes (``extra_handlers`` are matched after them). ``hpcgate up``
and the systemd unit (``docs/deploy/hpcgate-hub.service``) run it; a hub run as plain
``jupyterhub`` works too, only without the home page's "cancelled by an admin".
"""

from __future__ import annotations

from jupyterhub.app import JupyterHub

from . import stops


class HubApp(JupyterHub):
    """JupyterHub with :mod:`hpcgate.hub.stops` in front of its server API."""

    def init_handlers(self) -> None:
        super().init_handlers()
        self.handlers[:0] = self.add_url_prefix(self.hub_prefix, stops.handlers())


main = HubApp.launch_instance

if __name__ == "__main__":
    main()
