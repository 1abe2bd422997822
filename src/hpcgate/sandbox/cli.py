"""``hpcgate sandbox up | down | status``: the sandbox cluster from the command line.

Exit status: 0 done; 1 a part of the sandbox failed (the message names it); 2 usage
error or not root; ``status`` exits 3 when the sandbox is not (completely) up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import packages
from .cluster import Sandbox, require_root
from .proc import SandboxError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpcgate sandbox",
        description="A mini HPC cluster on this machine (root): a login node with sshd and "
        "slurmctld, a compute node with slurmd, in network namespaces; real Unix accounts.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser(
        "up",
        help="build and start the sandbox (idempotent: reports a running one); installs the "
        "Debian packages it needs first",
    )
    up.add_argument(
        "--no-install",
        action="store_true",
        help="do not install missing Debian packages: name them and the command that installs them",
    )
    up.add_argument(
        "--rebuild-venv", action="store_true", help="rebuild the job venv even if its stamp matches"
    )
    sub.add_parser(
        "down",
        help="stop every sandbox process; remove namespaces and routes (accounts, keys "
        "and the job venv stay)",
    )
    status = sub.add_parser("status", help="what runs, addresses, catalog and key paths")
    status.add_argument("--json", action="store_true", help="print JSON")
    return p


def _show_status(status: dict[str, Any]) -> str:
    daemons = ", ".join(f"{d} {pid if pid else 'not running'}" for d, pid in status["daemons"].items())
    namespaces = ", ".join(f"{ns} {'present' if ok else 'absent'}" for ns, ok in status["namespaces"].items())
    lines = [
        f"sandbox: {'up' if status['up'] else 'NOT up'}",
        f"  namespaces: {namespaces}",
        f"  daemons:    {daemons}",
        f"  guard route 10.250.0.0/16: {'present' if status['guard_route'] else 'absent'}; "
        f"login ip_forward: {status['login_ip_forward']}",
        f"  compute1 in Slurm: {status['compute_state'] or 'unknown'}",
        f"  hub {status['addresses']['hub']}; login {status['addresses']['login']}; "
        f"compute {status['addresses']['compute']}",
        f"  catalog:     {status['catalog']}",
        f"  account map: {status['account_map']} ("
        + ", ".join(f"{u} -> {a}" for u, a in status["users"].items())
        + ")",
        f"  known_hosts: {status['known_hosts']}",
        f"  SSH CA:      {status['ssh_ca']} (the catalog's certificates; hpcgate ca --dir {status['ssh_ca']} show)",
        "  keys:        " + "\n               ".join(f"{a}: {k}" for a, k in status["keys"].items()),
        f"  tunnel account: {status['tunnel_account']}",
        f"  job venv:    {status['venv']}",
        f"  logs:        {status['logs']}",
    ]
    ident = status.get("identity") or {}
    if ident.get("slapd") or ident.get("glewlwyd"):
        lines += [
            f"  directory:   {ident['ldap_url']} (slapd {ident['slapd'] or 'not running'}); "
            f"passwords in {ident['passwords']}",
            f"  OIDC issuer: {ident['issuer']} (glewlwyd {ident['glewlwyd'] or 'not running'}); "
            f"TOTP seeds in {ident['totp_seeds']}",
            "  log in:      hpcgate up --auth ldap --identity " + ident["identity_files"]["ldap"],
            "               hpcgate up --auth oidc --identity " + ident["identity_files"]["oidc"],
        ]
    if status["timings"]:
        lines.append("  last up (s): " + ", ".join(f"{k} {v}" for k, v in status["timings"].items()))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        require_root(f"hpcgate sandbox {args.action}")
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox()
    try:
        if args.action == "up":
            absent = packages.missing()
            if absent and args.no_install:
                print(
                    f"error: the sandbox needs these Debian packages: {', '.join(absent)}. "
                    f"Install them with: {packages.install_command(absent)}",
                    file=sys.stderr,
                )
                return 1
            packages.install(absent, log=lambda line: print(f"  {line}", flush=True))
            started = time.monotonic()
            sandbox.up(rebuild_venv=args.rebuild_venv, log=lambda line: print(f"  {line}", flush=True))
            print(f"sandbox up in {time.monotonic() - started:.1f} s\n")
            print(_show_status(sandbox.status()))
            return 0
        if args.action == "down":
            started = time.monotonic()
            sandbox.down()
            print(
                f"sandbox down in {time.monotonic() - started:.1f} s "
                "(accounts, keys and the job venv are kept for the next up)"
            )
            return 0
        status = sandbox.status()
        print(json.dumps(status, indent=2) if args.json else _show_status(status))
        return 0 if status["up"] else 3
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
