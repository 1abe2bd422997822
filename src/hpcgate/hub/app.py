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
from sqlalchemy import event
from traitlets import CaselessStrEnum

from . import activity, stops


class HubApp(JupyterHub):
    """JupyterHub with :mod:`hpcgate.hub.stops` in front of its server API,
    :mod:`hpcgate.hub.activity` in front of its activity API, and the
    SQLite database's ``synchronous`` setting on every connection (:attr:`sqlite_synchronous`)."""

    sqlite_synchronous = CaselessStrEnum(
        ["", "normal", "full", "extra"],
        "",
        help="""SQLite's ``PRAGMA synchronous`` on every connection of the hub to a SQLite
        database ("": SQLite's default, FULL). JupyterHub commits on the hub's event loop,
        several times per spawn; with FULL each commit waits for the disk (fsync), and
        under a storm of spawns on a busy disk those waits blocked the event loop for
        seconds (issue 15). In write-ahead-log mode (``hpcgate up`` puts its embedded
        database in it) NORMAL syncs only at checkpoints: the database stays consistent
        after any crash, a hub that is killed or restarted loses nothing, and only a
        power loss or an operating-system crash may lose the last commits (SQLite's own
        recommendation for WAL). ``hpcgate up`` sets NORMAL for its embedded database;
        other databases ignore this.""",
    ).tag(config=True)

    def init_db(self) -> None:
        super().init_db()
        if not self.sqlite_synchronous or not self.db_url.startswith("sqlite"):
            return
        engine = self.db.get_bind()
        pragma = f"PRAGMA synchronous={self.sqlite_synchronous.upper()}"

        @event.listens_for(engine, "connect")
        def _synchronous(dbapi_connection, connection_record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute(pragma)
            cursor.close()

        # connections opened before the listener (schema checks) get it when reopened
        self.db.close()
        engine.dispose()

    def init_handlers(self) -> None:
        super().init_handlers()
        self.handlers[:0] = self.add_url_prefix(self.hub_prefix, stops.handlers() + activity.handlers())


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
