"""Network helpers every part uses (neutral: imports nothing of hpcgate)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller binds it shortly after).

    The port is only probably free by then: callers that can bind port 0 themselves
    should, and this is for handing a port to another process.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
