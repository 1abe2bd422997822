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


def reserved_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` kept from everyone else until a server binds it with
    ``SO_REUSEADDR`` (as tornado, and so every Jupyter server, does).

    :func:`free_port` gives a port back to the system at once: until its consumer binds
    it, any process on the node may take it, and where many servers start at the same
    moment (a storm of spawns on one login node: 25 labs that each need 10-40 s before
    they bind) two of them get the same port; the second one's Jupyter server then ends
    with "port in use" and the hub's forward reaches the first one. Here the port is
    held in TIME_WAIT for the kernel's usual 60 s instead: this side accepts a
    connection to itself and closes it first. Until then neither ``bind(0)`` nor an
    outgoing connection's automatic port picks it, nor does a ``bind`` without
    ``SO_REUSEADDR``; a server that sets ``SO_REUSEADDR`` binds and listens on it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    unspecified = host in ("", "0.0.0.0", "::")
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        target = ("::1" if family == socket.AF_INET6 else "127.0.0.1") if unspecified else host
        with socket.create_connection((target, port), timeout=10) as client:
            accepted, _ = listener.accept()
            # the accepting side closes first: its end (this port) waits in TIME_WAIT
            accepted.close()
            client.recv(1)  # the peer's FIN: the close has happened before ours
    return port
