"""The hub's database URL: where it comes from, how it is checked, how it is shown.

SQLite under the state directory is the embedded default. PostgreSQL (or any database
SQLAlchemy and JupyterHub support) is chosen with a URL, which may carry a password and
is therefore a secret:

- ``--db-url-file FILE``: the URL is the file's first line; the file must not be
  readable by others (systemd's ``LoadCredential=`` is the intended source);
- ``HPCGATE_DB_URL`` in the environment;
- ``--db URL`` on the command line, only for URLs *without* a password (peer or
  certificate authentication over a Unix socket, a ``~/.pgpass`` / ``PGPASSFILE``):
  argv is visible to every user of the host, so a URL with a password is refused there.

Contract: :func:`resolve_db_url` returns the URL or ``None`` (the SQLite default) and
raises only :class:`DatabaseURLError`, whose message is a sentence for the admin that
never contains the password. :func:`redacted` is the only form in which a URL is logged.
:func:`check_connection` tries the URL before the hub starts, so that a wrong host or
password is one sentence rather than JupyterHub's advice to upgrade its database.
:func:`use_wal` puts the embedded SQLite database in write-ahead-log mode.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import stat
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

#: The environment variable ``hpcgate up`` reads the URL from (and passes it to the hub in).
ENV_VAR = "HPCGATE_DB_URL"

#: Python modules SQLAlchemy 2.x loads for each synchronous ``postgresql`` driver (JupyterHub is not async here).
_PG_DRIVERS = {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000"}


class DatabaseURLError(ValueError):
    """A database URL that cannot be used, explained in one sentence (no password)."""


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and messages)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<not a database URL>"
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in the authority or as ``?password=``)."""
    parsed = _parse(url)
    return bool(parsed.password) or "password" in parsed.query


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            f"{redacted(url)} is not a database URL; write it as postgresql://USER@HOST:PORT/DATABASE "
            "or sqlite:///PATH."
        ) from None


def check_url(url: str) -> str:
    """The URL, checked: a known backend whose Python driver is installed."""
    parsed = _parse(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        return url
    if backend != "postgresql":
        raise DatabaseURLError(
            f"hpcgate runs on SQLite or PostgreSQL; {redacted(url)} names the database {backend!r}."
        )
    # SQLAlchemy 2.x maps a bare postgresql:// to psycopg (3); 1.4 mapped it to psycopg2
    module = _PG_DRIVERS.get(driver or "psycopg")
    if module is None:
        raise DatabaseURLError(f"Unknown PostgreSQL driver {driver!r} in {redacted(url)}; use postgresql:// (psycopg).")
    if importlib.util.find_spec(module) is None:
        raise DatabaseURLError(
            f"The PostgreSQL driver {module} is not installed; install it with "
            f"`pip install 'hpcgate[postgresql]'` (psycopg) or name another driver in the URL."
        )
    return url


def read_url_file(path: str | os.PathLike[str]) -> str:
    """The URL on the first line of ``path``, a file others cannot read."""
    target = Path(path)
    try:
        mode = target.stat().st_mode
        text = target.read_text()
    except OSError as exc:
        raise DatabaseURLError(f"Cannot read the database URL file {target}: {exc.strerror}.") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise DatabaseURLError(
            f"The database URL file {target} is readable by every user of this host; "
            f"make it private first: chmod 600 {target}."
        )
    url = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not url:
        raise DatabaseURLError(f"The database URL file {target} is empty.")
    return url


def resolve_db_url(
    db: str | None = None, db_url_file: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The database URL from ``--db``, ``--db-url-file`` or ``HPCGATE_DB_URL`` (checked).

    ``None`` means the embedded SQLite default. Giving both ``--db`` and
    ``--db-url-file`` is an error; either overrides the environment.
    """
    environ = os.environ if environ is None else environ
    if db and db_url_file:
        raise DatabaseURLError("Give the database either with --db or with --db-url-file, not both.")
    if db:
        if has_password(db):
            raise DatabaseURLError(
                "The database URL given with --db holds a password, and a command line is visible to "
                f"every user of this host. Put the URL in a file only you can read (--db-url-file) or in "
                f"the environment variable {ENV_VAR}."
            )
        return check_url(db)
    if db_url_file:
        return check_url(read_url_file(db_url_file))
    url = environ.get(ENV_VAR, "").strip()
    return check_url(url) if url else None


def check_connection(url: str, timeout: int = 10) -> None:
    """Connect once and run ``SELECT 1``; a failure is a :class:`DatabaseURLError`.

    SQLite is not tried (JupyterHub creates its file). The driver's own message is kept
    (wrong password, unknown database, refused connection) with any password removed.
    """
    parsed = _parse(url)
    if parsed.drivername.startswith("sqlite"):
        return
    connect_args = {"connect_timeout": timeout} if parsed.drivername.startswith("postgresql") else {}
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        secret = parsed.password or parsed.query.get("password")
        if secret:
            reason = reason.replace(str(secret), "***")
        raise DatabaseURLError(f"Cannot connect to the database {redacted(url)}: {reason}") from None
    finally:
        engine.dispose()


def use_wal(path: str | os.PathLike[str]) -> str:
    """Put the SQLite database at ``path`` (created if missing) in write-ahead-log mode;
    the journal mode it has now (``"wal"``, or what SQLite kept where WAL is impossible).

    JupyterHub commits on the hub's event loop, several times per spawn (and hpcgate
    saves a spawner's state mid-start, so that a hub restart loses no job). In SQLite's
    default rollback-journal mode each commit writes and syncs a journal and the
    database and deletes the journal; in WAL mode a commit appends to the log and syncs
    it once, with the same durability (``synchronous`` stays FULL): under a storm of
    spawns on a busy disk those syncs were most of the hub's time (issue 15). The mode
    is stored in the database file, so JupyterHub's own connections use it too. WAL
    needs a local file system (as SQLite's locking does in any mode).
    """
    conn = sqlite3.connect(os.fspath(path))
    try:
        row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    finally:
        conn.close()
    return str(row[0]).lower() if row else ""
