"""A real OpenLDAP ``slapd`` holding the sandbox's people and groups (VOs).

:class:`Directory` runs Debian's slapd with its own configuration and database under
one directory (0700), listening on one loopback address and port, started as a daemon
with its own pid file and stopped by that PID. Nothing of it depends on systemd or on
``/etc/ldap``'s own configuration; tests and ``hpcgate sandbox up`` use it the same way.

Contents (suffix ``dc=hpcgate,dc=test``):

- ``ou=people``: one ``posixAccount`` + ``inetOrgPerson`` + ``eduPerson`` entry per user
  (``uid``, ``uidNumber``, ``homeDirectory``, ``userPassword`` as a salted SHA hash,
  ``eduPersonEntitlement`` URNs naming the user's groups, and ``employeeType`` holding
  the user's Unix account on the sandbox's systems: the attribute the ``ldap`` account
  source reads; ``businessCategory: openid`` names the scope the OIDC provider in front of
  the directory grants: see :mod:`.idp`);
- ``ou=groups``: one ``posixGroup`` per VO with ``memberUid`` values;
- ``cn=hub,ou=services``: the hub's service account (reads people and groups, nothing
  else; users can read their own entry; everything else is hidden).

The ``eduPerson`` schema (only ``eduPersonEntitlement`` and the auxiliary class, with
their registered OIDs) is written beside the configuration: Debian's slapd does not
ship it, and OIDC providers in front of a directory publish entitlements from it.

Secrets: the admin (rootdn) and service passwords and the users' passwords are
generated, kept 0600 in ``secrets/`` and handed to tools with ``-y FILE``, never in
argv. The database stores only salted hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .proc import SandboxError, make_dir, pid_alive, read_pid_file, run, stop_pid, tcp_open, wait_until, write_file

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=hpcgate,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
SERVICE_DN = f"cn=hub,ou=services,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
#: Entitlement URN of a group: what an IdP in front of this directory publishes.
ENTITLEMENT = "urn:geant:hpcgate.test:group:{group}"

SCHEMA = """\
# eduPerson (internet2), the two definitions the sandbox uses
attributetype ( 1.3.6.1.4.1.5923.1.1.1.7 NAME 'eduPersonEntitlement'
    DESC 'URI naming a right of the person'
    EQUALITY caseExactMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.5923.1.1.2 NAME 'eduPerson' AUXILIARY
    MAY ( eduPersonEntitlement ) )
"""


@dataclass(frozen=True)
class Person:
    """A directory user: login name, Unix account on the systems, VOs."""

    uid: str
    account: str
    groups: tuple[str, ...]
    uid_number: int


#: The sandbox's people: alice is in two VOs, bob in one, carol in one of her own.
PEOPLE_DEFAULT = (
    Person("alice", "hpcg-alice", ("ml-team", "physics"), 20001),
    Person("bob", "hpcg-bob", ("physics",), 20002),
    Person("carol", "hpcg-carol", ("astro",), 20003),
)


def ssha(password: str) -> str:
    """RFC 2307 ``{SSHA}`` hash of ``password`` (what slapd checks binds against)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class Directory:
    """One slapd under ``root`` on ``host:port``. Cheap to create; ``start`` does the work."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    people: tuple[Person, ...] = PEOPLE_DEFAULT
    _pid: int | None = field(default=None, repr=False)

    # --- paths ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self.root / "slapd.conf"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def pid_file(self) -> Path:
        return self.root / "slapd.pid"

    @property
    def admin_password_file(self) -> Path:
        return self.secrets_dir / "admin"

    @property
    def service_password_file(self) -> Path:
        """The hub's bind password (the file ``hpcgate up --auth ldap`` reads)."""
        return self.secrets_dir / "hub"

    @property
    def users_file(self) -> Path:
        """JSON ``{uid: password}`` of the generated user passwords (0600)."""
        return self.secrets_dir / "users.json"

    def password(self, uid: str) -> str:
        return json.loads(self.users_file.read_text())[uid]

    def groups(self) -> dict[str, list[str]]:
        """VO name -> member uids, as initially loaded."""
        out: dict[str, list[str]] = {}
        for person in self.people:
            for group in person.groups:
                out.setdefault(group, []).append(person.uid)
        return out

    # --- building ------------------------------------------------------------------

    def _secret(self, path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_urlsafe(18)
        write_file(path, value, 0o600)  # no newline: `-y FILE` sends the whole file
        return value

    def _config(self, admin_hash: str) -> str:
        return f"""\
# written by hpcgate (sandbox directory); not Debian's /etc/ldap configuration
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
include {self.root / "eduperson.schema"}
pidfile {self.pid_file}
argsfile {self.root / "slapd.args"}
modulepath /usr/lib/ldap
moduleload back_mdb
loglevel stats
disallow bind_anon
require authc
database mdb
maxsize 67108864
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {admin_hash}
directory {self.root / "db"}
index objectClass eq
index uid,memberUid eq
access to attrs=userPassword
    by self =xw
    by anonymous auth
    by * none
access to dn.subtree="{SUFFIX}"
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
"""

    def _ldif(self, passwords: dict[str, str], service_password: str) -> str:
        blocks = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: hpcgate sandbox\ndc: hpcgate",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
            f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services",
            f"dn: {SERVICE_DN}\nobjectClass: person\ncn: hub\nsn: hub\n"
            f"userPassword: {ssha(service_password)}",
        ]
        for p in self.people:
            entitlements = "".join(f"eduPersonEntitlement: {ENTITLEMENT.format(group=g)}\n" for g in p.groups)
            blocks.append(
                f"dn: uid={p.uid},{PEOPLE}\n"
                "objectClass: inetOrgPerson\nobjectClass: posixAccount\nobjectClass: eduPerson\n"
                f"uid: {p.uid}\ncn: {p.uid.title()}\nsn: {p.uid.title()}\n"
                f"mail: {p.uid}@hpcgate.test\n"
                f"uidNumber: {p.uid_number}\ngidNumber: {p.uid_number}\n"
                f"homeDirectory: /home/{p.account}\nloginShell: /bin/bash\n"
                f"employeeType: {p.account}\n"
                "businessCategory: openid\n"
                f"{entitlements}"
                f"userPassword: {ssha(passwords[p.uid])}"
            )
        for number, (group, members) in enumerate(sorted(self.groups().items()), start=30001):
            blocks.append(
                f"dn: cn={group},{GROUPS}\nobjectClass: posixGroup\ncn: {group}\ngidNumber: {number}\n"
                + "\n".join(f"memberUid: {m}" for m in members)
            )
        return "\n\n".join(blocks) + "\n"

    def build(self) -> None:
        """Write the configuration and load a fresh database (slapd must not run)."""
        if not os.path.exists(SLAPD):
            raise SandboxError("slapd is not installed (Debian packages slapd, ldap-utils)")
        make_dir(self.root, 0o700)
        make_dir(self.secrets_dir, 0o700)
        shutil.rmtree(self.root / "db", ignore_errors=True)
        make_dir(self.root / "db", 0o700)
        write_file(self.root / "eduperson.schema", SCHEMA, 0o644)
        admin = self._secret(self.admin_password_file)
        service = self._secret(self.service_password_file)
        if self.users_file.exists():
            passwords = json.loads(self.users_file.read_text())
        else:
            passwords = {}
        passwords = {p.uid: passwords.get(p.uid) or secrets.token_urlsafe(12) for p in self.people}
        write_file(self.users_file, json.dumps(passwords, indent=1) + "\n", 0o600)
        write_file(self.conf, self._config(ssha(admin)), 0o600)
        data = self.root / "init.ldif"
        write_file(data, self._ldif(passwords, service), 0o600)
        run(["slapadd", "-q", "-f", self.conf, "-l", data], what="loading the sandbox directory (slapadd)")
        data.unlink()

    # --- running ----------------------------------------------------------------------

    def running_pid(self) -> int | None:
        pid = read_pid_file(self.pid_file)
        if pid and pid_alive(pid) and os.readlink(f"/proc/{pid}/exe") == os.path.realpath(SLAPD):
            return pid
        return None

    def start(self, timeout: float = 20) -> int:
        """Start slapd (daemonised, pid file) and wait until it answers; return its PID."""
        pid = self.running_pid()
        if pid:
            return pid
        run(
            [SLAPD, "-f", self.conf, "-h", f"{self.url}/", "-s", "0", "-l", "LOCAL4"],
            what="starting slapd",
        )
        wait_until(lambda: self.running_pid() and tcp_open(self.host, self.port), f"slapd on {self.url}", timeout)
        self._pid = self.running_pid()
        assert self._pid
        return self._pid

    def stop(self) -> None:
        pid = self.running_pid()
        if pid:
            stop_pid(pid, "slapd")
        self.pid_file.unlink(missing_ok=True)

    # --- changes (as the directory's admin; the password travels in a file) -----------

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change as the directory admin (``ldapmodify -y FILE``)."""
        run(
            ["ldapmodify", "-x", "-H", self.url, "-D", ADMIN_DN, "-y", self.admin_password_file],
            input=ldif,
            what="ldapmodify",
        )

    def remove_member(self, group: str, uid: str) -> None:
        """Take ``uid`` out of VO ``group`` (group entry and the person's entitlement)."""
        self.modify(
            f"dn: cn={group},{GROUPS}\nchangetype: modify\ndelete: memberUid\nmemberUid: {uid}\n\n"
            f"dn: uid={uid},{PEOPLE}\nchangetype: modify\ndelete: eduPersonEntitlement\n"
            f"eduPersonEntitlement: {ENTITLEMENT.format(group=group)}\n"
        )

    def add_member(self, group: str, uid: str) -> None:
        self.modify(
            f"dn: cn={group},{GROUPS}\nchangetype: modify\nadd: memberUid\nmemberUid: {uid}\n\n"
            f"dn: uid={uid},{PEOPLE}\nchangetype: modify\nadd: eduPersonEntitlement\n"
            f"eduPersonEntitlement: {ENTITLEMENT.format(group=group)}\n"
        )
