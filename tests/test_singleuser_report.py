"""hpcgate-singleuser's address report: the node's name goes with it, and a hub that
does not know that key still gets the address.

The hub here is a stand-in HTTP server on loopback that answers like a hub of an earlier
hpcgate version (HTTP 400 for a key it does not know): an earlier hub cannot run from
this checkout. The current hub's side is tested with a real hub and real labs
(tests/hub/test_hub_local.py, tests/hub/test_hub_slurm.py: "Running on <node>").
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hpcgate import protocol, singleuser


class _OldHub(BaseHTTPRequestHandler):
    """Answers like a hub that knows only host, port and server_name; keeps each body
    in its server's ``bodies``."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(  # type: ignore[attr-defined]
            {"path": self.path, "auth": self.headers.get("Authorization"), **body})
        known = {"host", "port", "server_name"}
        self.send_response(400 if set(body) - known else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def old_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldHub)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("JUPYTERHUB_API_URL", f"http://127.0.0.1:{server.server_address[1]}/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "the-servers-token")
    monkeypatch.setenv("JUPYTERHUB_SERVER_NAME", "")
    yield server.bodies  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_the_report_names_the_node_and_an_older_hub_still_gets_the_address(old_hub, monkeypatch):
    monkeypatch.setenv("SLURMD_NODENAME", "compute7")
    assert singleuser.report_to_hub("10.0.0.7", 45678, timeout=20) is True
    first, second = old_hub
    assert first["path"] == "/hub/api/" + protocol.READY_PATH
    assert first["auth"] == "token the-servers-token"
    assert first["node"] == "compute7"
    # refused for the unknown key: sent again with the address alone, which is taken
    assert "node" not in second
    assert (second["host"], second["port"]) == ("10.0.0.7", 45678)


def test_the_node_is_slurms_name_else_the_host_name(monkeypatch):
    monkeypatch.setenv("SLURMD_NODENAME", "c042")
    assert singleuser.node_name() == "c042"
    monkeypatch.delenv("SLURMD_NODENAME")
    assert singleuser.node_name() == socket.gethostname()


def test_payload_leaves_an_unknown_node_out():
    assert protocol.ready_payload("h", 1, "s") == {"host": "h", "port": 1, "server_name": "s"}
    assert protocol.ready_payload("h", 1, "s", "n")["node"] == "n"
