"""A stand-in for a user's lab in the ops benchmark: reports its address to the hub like
hpcgate-singleuser and answers every GET with 200. Far lighter than JupyterLab, so a
benchmark can register hundreds of servers on two cores; it measures the hub, not labs."""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from hpcgate.singleuser import free_port, report_to_hub


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"stand-in lab of {os.environ.get('JUPYTERHUB_USER', '?')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port = free_port("127.0.0.1")
    server = HTTPServer(("127.0.0.1", port), Handler)
    if not report_to_hub("127.0.0.1", port):
        sys.exit("the hub did not take the address")
    server.serve_forever()


if __name__ == "__main__":
    main()
