"""The sandbox's directory (slapd) and identity provider (glewlwyd), and what the hub needs.

Both run in the root (hub) namespace on loopback ports chosen once and kept in
``<state_dir>/identity/ports.json`` (a kept port that something else took meanwhile is
replaced). :func:`identity_up` starts what is missing, rebuilding each from its fresh
data (passwords, the client secret and TOTP seeds are kept under ``identity/*/secrets``,
0600), and writes two identity files for ``hpcgate up``:

- ``identity/ldap.yaml``: ``hpcgate up --auth ldap --identity .../ldap.yaml``;
- ``identity/oidc.yaml``: ``hpcgate up --auth oidc --identity .../oidc.yaml`` (the
  provider's client accepts the callbacks of ``hpcgate up``'s default address,
  http://127.0.0.1:8000 and http://localhost:8000).

The files name secret files, never secrets. :func:`identity_down` stops both by PID.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from . import layout as L
from .directory import GROUPS, PEOPLE, SERVICE_DN, Directory
from .idp import CLIENT_ID, IdentityProvider
from .proc import make_dir, write_file

HUB_CALLBACKS = ("http://127.0.0.1:8000/hub/oauth_callback", "http://localhost:8000/hub/oauth_callback")


def identity_dir(lay: L.Layout) -> Path:
    return lay.state_dir / "identity"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _new_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(lay: L.Layout, running: dict[str, bool]) -> dict[str, int]:
    path = identity_dir(lay) / "ports.json"
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        ports = {}
    for name in ("slapd", "glewlwyd"):
        port = ports.get(name)
        if not isinstance(port, int) or (not running.get(name) and not _free(port)):
            ports[name] = _new_port()
    write_file(path, json.dumps(ports) + "\n", 0o644)
    return ports


def _parts(lay: L.Layout, ports: dict[str, int]) -> tuple[Directory, IdentityProvider]:
    base = identity_dir(lay)
    directory = Directory(base / "slapd", ports["slapd"])
    provider = IdentityProvider(base / "glewlwyd", ports["glewlwyd"], directory, redirect_uris=HUB_CALLBACKS)
    return directory, provider


def _saved_ports(lay: L.Layout) -> dict[str, int] | None:
    try:
        return json.loads((identity_dir(lay) / "ports.json").read_text())
    except (OSError, ValueError):
        return None


def identity_files(directory: Directory, provider: IdentityProvider) -> dict[str, dict[str, Any]]:
    return {
        "ldap": {
            "ldap": {
                "url": directory.url,
                "people": PEOPLE,
                "groups": GROUPS,
                "bind_dn": SERVICE_DN,
                "bind_password_file": str(directory.service_password_file),
                "attributes": ["uid", "employeeType"],
            }
        },
        "oidc": {
            "oidc": {
                "issuer": provider.issuer,
                "client_id": CLIENT_ID,
                "client_secret_file": str(provider.client_secret_file),
                "callback_url": HUB_CALLBACKS[0],
                "scopes": ["openid"],
                "account_claim": "hpc_account",
                "groups_claim": "eduperson_entitlement",
            }
        },
    }


def identity_up(lay: L.Layout, say: Any = None) -> dict[str, int]:
    """Start slapd and glewlwyd if they are not running; return their PIDs."""
    say = say or (lambda line: None)
    make_dir(identity_dir(lay), 0o700)
    saved = _saved_ports(lay)
    running = {}
    if saved:
        d, p = _parts(lay, saved)
        running = {"slapd": bool(d.running_pid()), "glewlwyd": bool(p.running_pid())}
    directory, provider = _parts(lay, _ports(lay, running))
    if not directory.running_pid():
        say(f"directory (slapd) on {directory.url}: alice, bob, carol; groups " + ", ".join(sorted(directory.groups())))
        provider.stop()  # it reads users from the directory: rebuild it too
        directory.build()
        directory.start()
    if not provider.running_pid():
        say(f"identity provider (glewlwyd, password + TOTP) on {provider.issuer}")
        provider.up()
    for kind, data in identity_files(directory, provider).items():
        write_file(identity_dir(lay) / f"{kind}.yaml", yaml.safe_dump(data, sort_keys=False), 0o644)
    os.chmod(identity_dir(lay), 0o755)  # the identity files are readable; secrets/ stay 0700
    pids = {"slapd": directory.running_pid(), "glewlwyd": provider.running_pid()}
    return {k: v for k, v in pids.items() if v}


def identity_down(lay: L.Layout) -> None:
    """Stop glewlwyd and slapd by their PIDs (their data stays for the next up)."""
    saved = _saved_ports(lay)
    if not saved:
        return
    directory, provider = _parts(lay, saved)
    provider.stop()
    directory.stop()


def identity_status(lay: L.Layout) -> dict[str, Any]:
    saved = _saved_ports(lay)
    if not saved:
        return {"slapd": None, "glewlwyd": None}
    directory, provider = _parts(lay, saved)
    return {
        "slapd": directory.running_pid(),
        "glewlwyd": provider.running_pid(),
        "ldap_url": directory.url,
        "issuer": provider.issuer,
        "identity_files": {k: str(identity_dir(lay) / f"{k}.yaml") for k in ("ldap", "oidc")},
        "passwords": str(directory.users_file),
        "totp_seeds": str(provider.totp_file),
    }
