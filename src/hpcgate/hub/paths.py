"""Paths the hub creates: private directories and admin path templates."""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Account names that may be put into a path or a command line.
ACCOUNT_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700. Returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def check_account(account: str) -> str:
    if not ACCOUNT_PATTERN.fullmatch(account) or account in (".", ".."):
        raise ValueError(f"account name {account!r} is not safe to use in a path or command")
    return account


def render_path(template: str, **values: str) -> str:
    """Fill an admin's path template (``{account}``, ``{state_dir}``; ``~`` expanded).

    Only the named fields are allowed; the account is checked first, so a user value
    can never add path components or format directives.
    """
    if "account" in values:
        check_account(values["account"])
    try:
        rendered = template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"path template {template!r} may only use {{{'}, {'.join(sorted(values))}}}: {exc}"
        ) from exc
    return os.path.expanduser(rendered)
