"""Finding users' SSH private keys on disk: proof that certificate logins write none.

sshd logs the fingerprint of the key behind every certificate login (``Accepted
publickey for ACCOUNT ... ED25519-CERT SHA256:... ID KEY-ID (serial N) ...``). :func:`cert_login_keys`
collects those fingerprints; :func:`files_holding` walks directories for private key
files (any ``PRIVATE KEY-----`` block) and returns those whose key has one of them.
Matching by fingerprint keeps the check exact on a machine where other processes
write unrelated keys under /tmp.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import asyncssh

CERT_LOGIN = re.compile(r"Accepted publickey for (\S+) from \S+ port \d+ ssh2: \S+-CERT (SHA256:\S+) ID (\S+) \(serial")


def cert_login_keys(log_text: str) -> dict[str, tuple[str, str]]:
    """fingerprint -> (account, key id) of every certificate login in an sshd log."""
    return {m.group(2): (m.group(1), m.group(3)) for m in CERT_LOGIN.finditer(log_text)}


def files_holding(fingerprints: Iterable[str], *roots: Path, since: float = 0.0) -> list[Path]:
    """Files under ``roots`` (changed at ``since`` or later) holding the private key of
    one of ``fingerprints``.

    A key made during a test can only be in a file written after it was made: pass the
    test's start as ``since`` and a walk of a crowded /tmp reads almost nothing (one
    stat per file, symlinked directories not followed).
    """
    wanted = set(fingerprints)
    found = []
    for path in _files_changed_since(roots, since):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"PRIVATE KEY-----" not in data:
            continue
        for block in re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", data, re.S):
            try:
                key = asyncssh.import_private_key(block)
            except (asyncssh.KeyImportError, ValueError):
                continue
            if key.get_fingerprint("sha256") in wanted:
                found.append(path)
    return found


def _files_changed_since(roots: Iterable[Path], since: float) -> Iterator[Path]:
    """Regular files of at most 1 MiB under ``roots`` whose mtime or ctime is ``since`` or later."""
    stack = [str(root) for root in roots]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                if st.st_size <= 1 << 20 and max(st.st_mtime, st.st_ctime) >= since:
                    yield Path(entry.path)


def private_key_lines(path: Path) -> dict[str, str]:
    """The base64 lines of an OpenSSH ed25519 private key file that hold its private
    half (lines 4 on; lines 1-3 hold the format header, the public key and a check
    number), by name: for a check that the key's text is in no argv, log or readable file.
    """
    body = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("-----")]
    return {f"line {n + 1} of {path}": line for n, line in enumerate(body) if n >= 3}
