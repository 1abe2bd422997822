"""hpcgate-singleuser: what a job runs on the node.

1. Reserve a port on the bind address (``HPCGATE_BIND_IP``, default: all interfaces
   of this node's host name): :func:`hpcgate.net.reserved_port`, so no other process on
   the node takes it before the Jupyter server binds it.
2. Report ``{host, port}`` (and the node's name, for the user's progress): to the hub API (``$JUPYTERHUB_API_URL/hpcgate/ready``,
   authenticated by this server's own token from the environment) and/or to a connection
   file (``HPCGATE_CONNECTION_FILE``, written 0600) that the hub reads over SSH where the
   node cannot reach the hub.
3. Start the Jupyter single-user server on that address (``JUPYTERHUB_SERVICE_URL`` is
   rewritten to it), passing the remaining arguments through: in this process when it is
   a console script of this installation (its start-up trimmed first:
   :mod:`hpcgate.launch`), else by exec.

The token is read from the environment only; it never appears in argv or a URL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from . import protocol
from .files import write_atomic
from .launch import defer_rfc3987_syntax
from .net import reserved_port


def log(message: str) -> None:
    if os.environ.get(protocol.LOG_FORMAT) == "json":
        from .logs import lab_line

        print(lab_line("hpcgate-singleuser", message), file=sys.stderr, flush=True)
        return
    print(f"[hpcgate-singleuser] {message}", file=sys.stderr, flush=True)


def bind_address() -> str:
    ip = os.environ.get(protocol.BIND_IP)
    if ip:
        return ip
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def report_timeout() -> float:
    """Seconds to keep trying to report (``HPCGATE_REPORT_TIMEOUT``, default 300).

    Long enough to outlast a hub restart while the job was pending: the report goes
    through once the hub (and its tunnel to this system) is back.
    """
    try:
        return max(1.0, float(os.environ.get(protocol.REPORT_TIMEOUT, "300")))
    except ValueError:
        return 300.0


def node_name() -> str:
    """The node this server runs on, as the scheduler names it (Slurm's
    ``SLURMD_NODENAME``), else this host's name; empty if neither is known."""
    try:
        return os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    except OSError:
        return ""


def report_to_hub(host: str, port: int, timeout: float | None = None) -> bool:
    api = os.environ.get("JUPYTERHUB_API_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not api or not token:
        log("no JUPYTERHUB_API_URL/JUPYTERHUB_API_TOKEN: not reporting to the hub")
        return False
    server_name = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
    node = node_name()

    def request_for(payload: dict) -> urllib.request.Request:
        return urllib.request.Request(
            api.rstrip("/") + "/" + protocol.READY_PATH,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )

    request = request_for(protocol.ready_payload(host, port, server_name, node))
    deadline = time.monotonic() + (report_timeout() if timeout is None else timeout)
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status in (200, 204):
                    log(f"reported {host}:{port} to the hub")
                    return True
        except urllib.error.HTTPError as exc:
            log(f"the hub refused the address report: HTTP {exc.code} {exc.reason}")
            if exc.code == 400 and node:
                # a hub older than the "node" key refuses it: the address alone will do
                node = ""
                request = request_for(protocol.ready_payload(host, port, server_name))
                continue
            if exc.code in (400, 403, 404):
                return False
        except (OSError, urllib.error.URLError) as exc:
            log(f"cannot reach the hub API at {api} (attempt {attempt}): {exc}")
        if time.monotonic() + delay > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def write_connection_file(path: str, host: str, port: int) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(target, json.dumps({"host": host, "port": port}))
    log(f"wrote connection file {target}")


def service_url(ip: str, port: int) -> str:
    current = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:8888/")
    host = f"[{ip}]" if ":" in ip else ip
    return urlunparse(current._replace(netloc=f"{host}:{port}"))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ip = bind_address()
    port = reserved_port(ip)
    host = os.environ.get(protocol.REPORT_HOST) or ip
    os.environ["JUPYTERHUB_SERVICE_URL"] = service_url(ip, port)
    connection_file = os.environ.get(protocol.CONNECTION_FILE)
    if connection_file:
        write_connection_file(connection_file, host, port)
    if os.environ.get(protocol.REPORT_TO_HUB, "1") != "0":
        reported = report_to_hub(host, port)
        if not reported and not connection_file:
            log("could not report the address; the hub will not find this server")
            sys.exit(3)
    from .lab.allocation import allocation_env

    # the lab's resource display counts against the job's allocation, not the node
    os.environ.update(allocation_env(os.environ))
    if os.environ.get(protocol.LOG_FORMAT) == "json":
        from .logs import json_config_dir

        os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            p for p in (json_config_dir(), os.environ.get("JUPYTER_CONFIG_PATH")) if p
        )
    program = os.environ.get(protocol.SINGLEUSER_APP) or "jupyterhub-singleuser"
    executable = shutil.which(program) or shutil.which(program, path=os.path.dirname(sys.executable))
    if executable is None:
        log(f"cannot find {program} on PATH")
        sys.exit(127)
    log(f"starting {program} on {ip}:{port}")
    entry = own_entry_point(program, executable)
    if entry is None:
        os.execv(executable, [executable, *argv])
    # the program is a console script of this very installation: run it in this
    # process (as exec would, with the same argv[0]) so its start-up is trimmed first
    sys.argv = [executable, *argv]
    defer_rfc3987_syntax()
    sys.exit(entry.load()())


def own_entry_point(program: str, executable: str) -> EntryPoint | None:
    """The console-script entry point ``program`` names when ``executable`` is this
    installation's own script for it (next to ``sys.executable``), else None (a program
    from another environment, or not a console script: it is exec'd)."""
    here = os.path.dirname(os.path.abspath(sys.executable))
    if os.path.dirname(os.path.abspath(executable)) != here:
        return None
    found = entry_points(group="console_scripts", name=os.path.basename(executable))
    return next(iter(found), None)


if __name__ == "__main__":
    main()
