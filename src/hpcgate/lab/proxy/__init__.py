"""The streaming HTTP and WebSocket proxy (see :mod:`.handler`)."""

from .handler import ProxyHandler, RewritableResponse, proxy_handlers

__all__ = ["ProxyHandler", "RewritableResponse", "proxy_handlers"]
