"""Files an app's spec serves itself (``static_files``), e.g. noVNC's web client.

Contract: :func:`static_file` only returns files inside ``root`` (after resolving
symlinks and ``..``); anything else, and directories, is :class:`NotFound`.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote


class NotFound(Exception):
    """No servable file at that path."""


def static_file(root: str, rel_path: str) -> tuple[bytes, str]:
    """The body and content type of ``rel_path`` (URL-encoded, relative) under ``root``."""
    base = Path(root).resolve()
    target = (base / unquote(rel_path).lstrip("/")).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        raise NotFound(rel_path)
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        ctype += "; charset=utf-8"
    return target.read_bytes(), ctype


def index_url(prefix: str, index: str) -> str:
    """Where ``<prefix>/`` redirects: ``index`` with ``{prefix}`` (no leading slash) filled."""
    return prefix + "/" + index.replace("{prefix}", prefix.lstrip("/") + "/")
