"""hpcgate.net.reserved_port: the lab's port is kept from other processes until its
Jupyter server binds it (a storm of labs starting on one login node took the same port
twice with a port that was only free for a moment)."""

from __future__ import annotations

import errno
import socket

import pytest

from hpcgate.net import free_port, reserved_port


def _plain_bind(host: str, port: int) -> int:
    """0 if a bind without SO_REUSEADDR succeeds, else its errno."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno or -1
    return 0


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_reserved_port_refuses_other_binders_and_admits_the_server(host):
    port = reserved_port(host)
    # another process's plain bind (and so bind(0)'s choice) cannot take it ...
    assert _plain_bind("127.0.0.1", port) == errno.EADDRINUSE
    # ... while the server, binding with SO_REUSEADDR as tornado does, gets it and serves
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"x")
                assert accepted.recv(1) == b"x"


def test_bind_zero_never_hands_out_a_reserved_port():
    held = reserved_port()
    sockets = []
    try:
        for _ in range(500):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
            assert s.getsockname()[1] != held
    finally:
        for s in sockets:
            s.close()


def test_a_merely_free_port_is_anyones():
    """What reserved_port exists for: free_port's port is open to any binder."""
    assert _plain_bind("127.0.0.1", free_port()) == 0
