"""The proxy's one error type."""

from __future__ import annotations

from tornado import web


class ProxyError(web.HTTPError):
    """An error answered with a fixed, plain-text message (never the requested host or path)."""
