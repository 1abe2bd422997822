"""The hub's database URL: sources, checks, and that a password never shows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpcgate.database import DatabaseURLError, has_password, redacted, resolve_db_url, use_wal

SECRET = "s3cr3t-pw"
URL = f"postgresql://hub:{SECRET}@db.example.org:5432/hpcgate"


def test_redacted_hides_the_password_wherever_it_is():
    assert SECRET not in redacted(URL) and "db.example.org" in redacted(URL)
    assert SECRET not in redacted(f"postgresql://hub@/hpcgate?host=/run/postgresql&password={SECRET}")
    assert redacted("not a url") == "<not a database URL>"


def test_has_password():
    assert has_password(URL)
    assert has_password(f"postgresql://hub@h/db?password={SECRET}")
    assert not has_password("postgresql://hub@/hpcgate?host=/run/postgresql")


def test_sqlite_is_the_default_and_env_is_read():
    assert resolve_db_url(environ={}) is None
    assert resolve_db_url(environ={"HPCGATE_DB_URL": URL}) == URL


def test_a_password_on_the_command_line_is_refused_without_repeating_it():
    with pytest.raises(DatabaseURLError) as err:
        resolve_db_url(db=URL, environ={})
    assert "--db-url-file" in str(err.value) and SECRET not in str(err.value)
    assert resolve_db_url(db="postgresql://hub@/hpcgate?host=/run/postgresql", environ={}).startswith("postgresql")


def test_url_file_must_be_private(tmp_path):
    path = tmp_path / "db-url"
    path.write_text(URL + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(DatabaseURLError, match="readable by every user"):
        resolve_db_url(db_url_file=str(path), environ={})
    os.chmod(path, 0o600)
    assert resolve_db_url(db_url_file=str(path), environ={"HPCGATE_DB_URL": "sqlite:///x"}) == URL
    path.write_text("\n")
    with pytest.raises(DatabaseURLError, match="is empty"):
        resolve_db_url(db_url_file=str(path), environ={})
    with pytest.raises(DatabaseURLError, match="Cannot read"):
        resolve_db_url(db_url_file=str(tmp_path / "missing"), environ={})


@pytest.mark.parametrize(
    "url, sentence",
    [
        ("mysql://hub@h/db", "names the database 'mysql'"),
        ("postgresql+nosuch://hub@h/db", "Unknown PostgreSQL driver"),
        ("postgresql+pg8000://hub@h/db", "driver pg8000 is not installed"),
        ("postgresql+asyncpg://hub@h/db", "Unknown PostgreSQL driver"),
        ("::nonsense::", "is not a database URL"),
    ],
)
def test_unusable_urls_get_a_sentence(url, sentence):
    with pytest.raises(DatabaseURLError, match=sentence):
        resolve_db_url(environ={"HPCGATE_DB_URL": url})


def test_both_db_options_are_refused(tmp_path):
    with pytest.raises(DatabaseURLError, match="not both"):
        resolve_db_url(db="sqlite:///x", db_url_file=str(tmp_path / "f"), environ={})


def test_hpcgate_up_refuses_a_password_in_argv(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hpcgate.cli", "up", "--state-dir", str(tmp_path), "--db", URL],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "holds a password" in r.stderr and SECRET not in r.stderr + r.stdout
    assert not (tmp_path / "hpcgate-up.json").exists()


def test_hpcgate_up_says_why_it_cannot_connect(tmp_path):
    from hpcgate.net import free_port

    url = f"postgresql://hub:{SECRET}@127.0.0.1:{free_port()}/hpcgate"
    env = {**os.environ, "HPCGATE_DB_URL": url}
    r = subprocess.run([sys.executable, "-m", "hpcgate.cli", "up", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "Cannot connect to the database postgresql://hub:***@127.0.0.1" in r.stderr, r.stderr
    assert "refused" in r.stderr and SECRET not in r.stderr + r.stdout


def test_a_wrong_password_is_one_sentence_without_it(postgres):
    from hpcgate.database import check_connection
    from tests.pgtools import new_database

    good = new_database(postgres)
    check_connection(good)
    wrong = good.replace("@127.0.0.1", "x@127.0.0.1")
    wrong_password = wrong.split(":")[2].split("@")[0]
    with pytest.raises(DatabaseURLError) as err:
        check_connection(wrong)
    assert "password authentication failed" in str(err.value)
    assert wrong_password not in str(err.value)


def test_the_embedded_sqlite_runs_in_wal_mode_and_jupyterhub_builds_on_it(tmp_path):
    """use_wal: a new file in WAL mode (persisted in the file), kept by JupyterHub's own
    engine, which creates its tables in it and commits through the log."""
    import sqlite3

    from jupyterhub import orm

    path = tmp_path / "jupyterhub.sqlite"
    assert use_wal(path) == "wal"
    assert use_wal(path) == "wal"  # idempotent
    session = orm.new_session_factory("sqlite:///" + str(path))()
    session.add(orm.User(name="ada"))
    session.commit()
    session.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    finally:
        conn.close()
