"""``python -m hpcgate.hub.app``: JupyterHub with hpcgate's routes that must come first.

:class:`HubApp` is JupyterHub itself (every option, subcommand and config file works
the same) with one change: :func:`hpcgate.hub.stops.handlers` are matched before
JupyterHub's own routes (``extra_handlers`` are matched after them). ``hpcgate up``
and the systemd unit (``docs/deploy/hpcgate-hub.service``) run it; a hub run as plain
``jupyterhub`` works too, only without the home page's "cancelled by an admin".
"""

from __future__ import annotations

import signal

from jupyterhub.app import JupyterHub

from . import stops


class HubApp(JupyterHub):
    """JupyterHub with :mod:`hpcgate.hub.stops` in front of its server API."""

    def init_handlers(self) -> None:
        super().init_handlers()
        self.handlers[:0] = self.add_url_prefix(self.hub_prefix, stops.handlers())


def default_sigint() -> None:
    """Give SIGINT its default meaning again when this process inherited it ignored.

    A hub started in the background by a non-interactive shell (``nohup``, ``cmd &`` in
    a script, some CI runners) inherits SIGINT as ignored, and every process it starts
    (the idle culler, local servers) would inherit that too. JupyterHub stops managed
    services and local servers with SIGINT first and waits ``interrupt_timeout`` before
    SIGTERM, so every such stop, and the hub's own shutdown, would take that long.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    default_sigint()
    HubApp.launch_instance(argv)

if __name__ == "__main__":
    main()
