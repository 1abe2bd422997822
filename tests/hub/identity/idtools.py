"""Shared pieces of the identity tests: the VO catalog and the secret-leak checks."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

_CATALOG = """
systems:
  gpu:
    kind: local
    description: ML system
    workdir: "{state_dir}/users/{account}"
    accounts: ACCOUNTS
    partitions: {interactive: {}}
  phys:
    kind: local
    description: Physics system
    partitions: {interactive: {}}
  sky:
    kind: local
    description: Astronomy system
    partitions: {interactive: {}}
groups:
  ml-team: {grants: [{system: gpu}]}
  physics: {grants: [{system: phys}]}
  astro: {grants: [{system: sky}]}
defaults: {system: gpu}
"""


def vo_catalog(accounts: str) -> str:
    """Three local systems, one per directory group; ``gpu`` takes its account from ``accounts``."""
    return textwrap.dedent(_CATALOG).replace("ACCOUNTS", accounts)


def process_cmdlines() -> dict[int, str]:
    """PID -> command line of every process on the machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[int(entry)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                pass
    return out


def assert_secrets_hidden(secrets: Mapping[str, str], logs: str, roots: Iterable[Path], running: Iterable[str]) -> None:
    """No secret in any process's argv or in ``logs``; files under ``roots`` holding one are private.

    ``running``: names that must appear in some command line (the check saw the servers).
    """
    procs = process_cmdlines()
    for name in running:
        assert any(name in c for c in procs.values()), f"no {name} process to inspect"
    for what, value in secrets.items():
        assert value, f"{what} is empty"
        assert not [p for p, c in procs.items() if value in c], f"{what} in a process's argv"
        assert value not in logs, f"{what} in a log"
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read().decode("utf-8", "replace")
                except OSError:
                    continue
                if any(v in data for v in secrets.values()):
                    mode = os.stat(path).st_mode
                    assert mode & 0o077 == 0, f"{path} holds a secret and is mode {oct(mode)}"
