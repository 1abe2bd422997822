"""A real OpenID Connect provider with a second factor: Debian's ``glewlwyd``.

:class:`IdentityProvider` runs glewlwyd under one directory (0700): its own SQLite
database (created from Debian's ``init.sqlite3.sql``), its own configuration (Debian's
sample with the port, address, database, log and web-app paths replaced), listening on
one loopback port, started in the foreground by us and stopped by its PID.

:meth:`IdentityProvider.configure` sets it up through glewlwyd's own admin API:

- users come from the sandbox directory (:mod:`.directory`, glewlwyd's LDAP user
  module, read-only): the password is the directory password; ``eduPersonEntitlement``
  and ``employeeType`` become the claims ``eduperson_entitlement`` and ``hpc_account``;
  ``preferred_username`` is the uid; the LDAP attribute ``businessCategory`` lists the
  glewlwyd scopes a user has (``openid``);
- the scope ``openid`` requires the password *and* a TOTP code (glewlwyd's OTP scheme);
  every person gets a TOTP seed (``secrets/totp.json``, 0600, base32) registered by
  the admin API. glewlwyd accepts one TOTP login per user per 30-second step;
- the OIDC plugin signs with a fresh RSA key; access tokens live
  :attr:`IdentityProvider.access_token_lifetime` seconds, refresh tokens an hour;
- one confidential client ``hpcgate-hub`` whose secret is in ``secrets/client``
  (0600), with the redirect URIs given;
- last, the admin password that Debian's initial database sets (``password``) is
  replaced by a random one (``secrets/admin``); the API is only reachable on loopback
  during those seconds.

The provider's pages (``/login.html``: password, then the TOTP code, then consent) are
glewlwyd's own web app from ``/usr/share/glewlwyd/webapp``, copied with Debian's
symlinks resolved (glewlwyd's file server does not follow them).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .directory import PEOPLE, SERVICE_DN, Directory
from .proc import SandboxError, make_dir, pid_alive, stop_pid, wait_until, write_file

GLEWLWYD = "/usr/bin/glewlwyd"
SAMPLE_CONF = Path("/etc/glewlwyd/glewlwyd.conf")
INIT_SQL = Path("/usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz")
WEBAPP = Path("/usr/share/glewlwyd/webapp")
#: The web app's settings (Debian links webapp/config.json to this directory).
WEBAPP_CONFIG = Path("/etc/glewlwyd/config-2.7.json/config.json")
CLIENT_ID = "hpcgate-hub"
#: What Debian's initial database sets for the user ``admin``; replaced at once.
INITIAL_ADMIN_PASSWORD = "password"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def rsa_jwks(kid: str) -> str:
    """A fresh private RSA JWKS (JSON) for the OIDC plugin's signatures."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = key.private_numbers()
    pub = priv.public_numbers
    jwk = {
        "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": _b64(pub.n), "e": _b64(pub.e), "d": _b64(priv.d), "p": _b64(priv.p), "q": _b64(priv.q),
        "dp": _b64(priv.dmp1), "dq": _b64(priv.dmq1), "qi": _b64(priv.iqmp),
    }  # fmt: skip
    return json.dumps({"keys": [jwk]})


@dataclass
class IdentityProvider:
    """glewlwyd under ``root`` on ``host:port`` with users from ``directory``."""

    root: Path
    port: int
    directory: Directory
    redirect_uris: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    access_token_lifetime: int = 300
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/api/oidc"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def client_secret_file(self) -> Path:
        return self.secrets_dir / "client"

    @property
    def totp_file(self) -> Path:
        """JSON ``{uid: base32 seed}`` (0600)."""
        return self.secrets_dir / "totp.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "glewlwyd.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "glewlwyd.log"

    def totp_seed(self, uid: str) -> str:
        return json.loads(self.totp_file.read_text())[uid]

    # --- building ----------------------------------------------------------------------

    def _config(self) -> str:
        text = SAMPLE_CONF.read_text()
        replacements = {
            r"^port=.*$": f"port={self.port}",
            r"^#?bind_address=.*$": f'bind_address="{self.host}"',
            r"^external_url=.*$": f'external_url="{self.url}"',
            r"^# ?static_files_path=.*$": f'static_files_path="{self.root / "webapp"}/"',
            r"^log_level=.*$": 'log_level="INFO"',
            r"^log_file=.*$": f'log_file="{self.log_file}"',
            r"^session_expiration=.*$": "session_expiration=3600",
            r"^allow_multiple_user_per_session=.*$": "allow_multiple_user_per_session=false",
            r"^@include .*glewlwyd-db.conf.*$": (
                f'database =\n{{\n  type = "sqlite3"\n  path = "{self.root / "glewlwyd.db"}"\n}};'
            ),
        }
        for pattern, value in replacements.items():
            text, n = re.subn(pattern, value, text, count=1, flags=re.M)
            if not n:
                raise SandboxError(f"glewlwyd: {SAMPLE_CONF} has no line matching {pattern!r}")
        return "# written by hpcgate (sandbox identity provider) from Debian's sample\n" + text

    def build(self) -> None:
        """A fresh database and configuration (glewlwyd must not run)."""
        for path in (GLEWLWYD, SAMPLE_CONF, INIT_SQL, WEBAPP, WEBAPP_CONFIG):
            if not os.path.exists(path):
                raise SandboxError(f"glewlwyd: {path} is missing (Debian package glewlwyd)")
        make_dir(self.root, 0o700)
        make_dir(self.secrets_dir, 0o700)
        db = self.root / "glewlwyd.db"
        db.unlink(missing_ok=True)
        with gzip.open(INIT_SQL, "rt", encoding="utf-8") as f:
            sql = f.read()
        fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        conn = sqlite3.connect(db)
        try:
            conn.executescript(sql)
            conn.commit()
        finally:
            conn.close()
        os.chmod(db, 0o600)
        write_file(self.root / "glewlwyd.conf", self._config(), 0o600)
        # glewlwyd's file server does not follow Debian's symlinks (jquery, bootstrap,
        # fonts, config.json): serve a resolved copy
        webapp = self.root / "webapp"
        shutil.rmtree(webapp, ignore_errors=True)
        shutil.copytree(WEBAPP, webapp, symlinks=False, ignore=shutil.ignore_patterns("config.json", "*.map"))
        shutil.copyfile(WEBAPP_CONFIG, webapp / "config.json")

    # --- running ---------------------------------------------------------------------

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and os.readlink(f"/proc/{pid}/exe") == os.path.realpath(GLEWLWYD):
            return pid
        return None

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/config/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 20) -> int:
        pid = self.running_pid()
        if pid:
            return pid
        log = open(self.root / "glewlwyd.out", "ab")
        try:
            self._proc = subprocess.Popen(
                [GLEWLWYD, "-c", str(self.root / "glewlwyd.conf")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        write_file(self.pid_file, str(self._proc.pid), 0o600)

        def up() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                tail = (self.root / "glewlwyd.out").read_text(errors="replace")[-800:]
                raise SandboxError(f"glewlwyd exited with {self._proc.returncode}: {tail}")
            return self._answers()

        wait_until(up, f"glewlwyd on {self.url}", timeout)
        return self._proc.pid

    def stop(self) -> None:
        pid = self.running_pid()
        if pid:
            stop_pid(pid, "glewlwyd")
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.send_signal(signal.SIGKILL)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    # --- configuration through glewlwyd's admin API -------------------------------

    def _admin(self, password: str) -> requests.Session:
        s = requests.Session()
        r = s.post(f"{self.url}/api/auth/", json={"username": "admin", "password": password}, timeout=10)
        if r.status_code != 200:
            raise SandboxError(f"glewlwyd: the admin login failed ({r.status_code})")
        return s

    @staticmethod
    def _call(s: requests.Session, method: str, url: str, body: Any, what: str) -> None:
        r = s.request(method, url, json=body, timeout=20)
        if r.status_code != 200:
            raise SandboxError(f"glewlwyd: {what}: HTTP {r.status_code} {r.text[:300]}")

    @staticmethod
    def _kept(path: Path, make: Any) -> str:
        """The secret in ``path`` (0600), made by ``make()`` the first time."""
        if path.exists():
            os.chmod(path, 0o600)
            return path.read_text().strip()
        value = make()
        write_file(path, value, 0o600)
        return value

    def configure(self) -> None:
        """Modules, scope, plugin, client, TOTP seeds; then a random admin password.

        Needs a freshly built, running provider; restarts it at the end so that every
        module runs with the stored parameters.
        """
        api = f"{self.url}/api"
        s = self._admin(INITIAL_ADMIN_PASSWORD)
        bind_password = self.directory.service_password_file.read_text().strip()
        readonly = {"read": True, "write": False, "profile-read": False, "profile-write": False}
        self._call(s, "POST", f"{api}/mod/user/", {
            "module": "ldap", "name": "directory", "display_name": "hpcgate directory",
            "order_rank": 1, "readonly": True,
            "parameters": {
                "uri": self.directory.url, "bind-dn": SERVICE_DN, "bind-password": bind_password,
                "search-scope": "one", "page-size": 50, "base-search": PEOPLE,
                "filter": "objectClass=posixAccount", "username-property": "uid",
                "scope-property": "businessCategory", "scope-match": [],
                "name-property": "cn", "email-property": "mail",
                "data-format": {
                    "entitlements": {"property": "eduPersonEntitlement", "multiple": True, **readonly},
                    "account": {"property": "employeeType", "multiple": False, **readonly},
                },
            },
        }, "the LDAP user module")  # fmt: skip
        self._call(s, "POST", f"{api}/mod/scheme/", {
            "module": "otp", "name": "otp", "display_name": "TOTP code", "expiration": 600,
            "max_use": 0, "allow_user_register": False,
            "parameters": {
                "otp-length": 6, "issuer": "hpcgate-sandbox", "secret-minimum-size": 16,
                "hotp-allow": False, "hotp-window": 0, "totp-allow": True, "totp-window": 30,
                "totp-start-offset": 0,
            },
        }, "the TOTP scheme")  # fmt: skip
        self._call(s, "PUT", f"{api}/scope/openid", {
            "name": "openid", "display_name": "hpcgate hub",
            "description": "Log in to the hpcgate hub", "password_required": True,
            "password_max_age": 0, "scheme": {"2fa": [{"scheme_type": "otp", "scheme_name": "otp"}]},
        }, "the openid scope (password + TOTP)")  # fmt: skip
        claim = {"type": "string", "mandatory": True, "on-demand": False, "scope": []}
        self._call(s, "POST", f"{api}/mod/plugin/", {
            "module": "oidc", "name": "oidc", "display_name": "OpenID Connect",
            "parameters": {
                "iss": self.issuer, "jwt-type": "rsa", "jwt-key-size": "256",
                "jwks-private": rsa_jwks("hpcgate-sandbox"), "default-kid": "hpcgate-sandbox",
                "jwks-show": True, "access-token-duration": self.access_token_lifetime,
                "refresh-token-duration": 3600, "code-duration": 600, "refresh-token-rolling": True,
                "allow-non-oidc": False, "auth-type-code-enabled": True,
                "auth-type-token-enabled": False, "auth-type-id-token-enabled": False,
                "auth-type-none-enabled": False, "auth-type-password-enabled": False,
                "auth-type-client-enabled": False, "auth-type-refresh-enabled": True,
                "auth-type-device-enabled": False,
                "scope": [{"name": "openid", "refresh-token-rolling": True}],
                "allowed-scope": ["openid"],
                "claims": [
                    {"name": "eduperson_entitlement", "user-property": "entitlements", **claim},
                    {"name": "hpc_account", "user-property": "account", **claim},
                    {"name": "preferred_username", "user-property": "username", **claim},
                ],
                "name-claim": "mandatory", "name-claim-scope": [], "email-claim": "mandatory",
                "email-claim-scope": [], "scope-claim": "no", "scope-claim-scope": [],
                "address-claim": {"type": "no", "formatted": "", "street_address": "", "locality": "",
                                  "region": "", "postal_code": "", "country": "", "mandatory": False},
                "secret-type": "public", "session-management-allowed": True,
                "session-cookie-name": "GLEWLWYD2_OIDC_SID", "session-cookie-expiration": 3600,
                "service-documentation": "", "op-policy-uri": "", "op-tos-uri": "",
                "request-parameter-allow": False, "pkce-allowed": True,
                "introspection-revocation-allowed": False, "register-client-allowed": False,
            },
        }, "the OIDC plugin")  # fmt: skip
        client_secret = self._kept(self.client_secret_file, lambda: secrets.token_urlsafe(32))
        self._call(s, "POST", f"{api}/client/", {
            "client_id": CLIENT_ID, "name": "hpcgate hub", "enabled": True, "confidential": True,
            "password": client_secret, "redirect_uri": list(self.redirect_uris),
            "authorization_type": ["code", "refresh_token"],
            "token_endpoint_auth_method": ["client_secret_basic", "client_secret_post"], "scope": [],
        }, "the hub's client")  # fmt: skip
        # seeds survive a rebuild, so an authenticator app enrolled once keeps working
        kept = json.loads(self.totp_file.read_text()) if self.totp_file.exists() else {}
        seeds = {p.uid: kept.get(p.uid) or base64.b32encode(secrets.token_bytes(20)).decode() for p in self.directory.people}
        write_file(self.totp_file, json.dumps(seeds, indent=1), 0o600)
        for uid, seed in seeds.items():
            self._call(s, "POST", f"{api}/delegate/{uid}/profile/scheme/register/", {
                "username": uid, "scheme_type": "otp", "scheme_name": "otp",
                "value": {"type": "TOTP", "secret": seed, "time_step_size": 30},
            }, f"the TOTP seed of {uid}")  # fmt: skip
        admin_password = secrets.token_urlsafe(24)
        write_file(self.secrets_dir / "admin", admin_password, 0o600)
        self._call(s, "PUT", f"{api}/profile/password", {
            "old_password": INITIAL_ADMIN_PASSWORD, "password": admin_password,
        }, "replacing the initial admin password")  # fmt: skip
        # module parameters take effect on start: restart with everything stored
        self.stop()
        self.start()

    def up(self) -> int:
        """Build, start and configure; return the PID."""
        self.build()
        self.start()
        try:
            self.configure()
        except BaseException:
            self.stop()
            raise
        pid = self.running_pid()
        assert pid
        return pid
