"""Run an X server and a session command on it: ``python -m ...xsession SERVER... -- CLIENT...``.

The X server (Xvnc here) picks a free display itself (``-displayfd``); the client
(a terminal) gets ``DISPLAY`` set to it. This process stays in the foreground as the
app's process-group leader: it exits when the X server exits (ending the client) and,
on SIGTERM, ends both. The client ending leaves the desktop up (restart the app
from the Running apps panel to get a new terminal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``SERVER... -- CLIENT...`` into the two argv lists (client may be empty)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    server_argv, client_argv = split_argv(list(sys.argv[1:] if argv is None else argv))
    if not server_argv:
        print("usage: python -m hpcgate.lab.apps.recipes.xsession XSERVER [ARGS] -- CLIENT [ARGS]", file=sys.stderr)
        return 2
    r, w = os.pipe()
    server = subprocess.Popen([*server_argv, "-displayfd", str(w)], pass_fds=[w])
    os.close(w)
    display = b""
    while not display.endswith(b"\n"):
        chunk = os.read(r, 64)
        if not chunk:
            break
        display += chunk
    os.close(r)
    if not display.strip():
        print("xsession: the X server did not report a display", file=sys.stderr)
        return server.wait() or 1
    env = {**os.environ, "DISPLAY": ":" + display.decode().strip()}
    print(f"xsession: X server on display {env['DISPLAY']}", flush=True)
    client = subprocess.Popen(client_argv, env=env) if client_argv else None

    def stop(signum: int, frame: object) -> None:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.wait()
    if client is not None and client.poll() is None:
        client.terminate()
        client.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
