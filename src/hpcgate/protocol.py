"""What the hub and a job pass each other: every ``HPCGATE_*`` name and payload.

The hub (spawner, backends) sets these in the server's environment; the job's
``hpcgate-singleuser`` and the lab extension read them. Both sides import the names
from here, so that a name is written once. Neutral: imports nothing of hpcgate.

Hub -> job (environment of the server):

==========================  ==================================================================
:data:`APPS`                the catalog's apps of the server's system, JSON (read by the lab)
:data:`KERNELS`             the system's kernels from module sets, JSON (hpcgate.lab.kernels)
:data:`BIND_IP`             address the server binds (the local backend and a login node
                            that is also the jump host: ``127.0.0.1``); unset: the node's
:data:`REPORT_HOST`         host reported to the hub when it differs from the bind address
:data:`CONNECTION_FILE`     where to write the address (JSON ``{"host", "port"}``, 0600),
                            for nodes whose report cannot reach the hub; set by the job
                            script (ssh start script, Slurm template) from the catalog's
                            ``ssh.connection_file``
:data:`LOG_FORMAT`          ``json``: the job's and the lab's log lines are JSON (hpcgate.logs)
:data:`SYSTEM`              the server's catalog system, a field of those JSON lines
==========================  ==================================================================

Admin settings a job may carry (from a system's ``setup`` or the environment):
:data:`REPORT_TIMEOUT` (seconds to keep trying the report, default 300),
:data:`REPORT_TO_HUB` (``0``: only the connection file), :data:`SINGLEUSER_APP` (the
program to exec, default ``jupyterhub-singleuser``).

Job -> hub: ``POST $JUPYTERHUB_API_URL/`` + :data:`READY_PATH` with :func:`ready_payload`,
authenticated by the server's own API token; or the connection file.
"""

from __future__ import annotations

from typing import Any

APPS = "HPCGATE_APPS"
KERNELS = "HPCGATE_KERNELS"
BIND_IP = "HPCGATE_BIND_IP"
REPORT_HOST = "HPCGATE_REPORT_HOST"
CONNECTION_FILE = "HPCGATE_CONNECTION_FILE"
REPORT_TIMEOUT = "HPCGATE_REPORT_TIMEOUT"
REPORT_TO_HUB = "HPCGATE_REPORT_TO_HUB"
SINGLEUSER_APP = "HPCGATE_SINGLEUSER_APP"
LOG_FORMAT = "HPCGATE_LOG_FORMAT"
SYSTEM = "HPCGATE_SYSTEM"

#: The hub API route a starting server reports its address to (below ``/hub/api/``).
READY_PATH = "hpcgate/ready"
#: The hub API route of a user's offer (below ``/hub/api/``).
OFFER_PATH = "hpcgate/offer"
#: The hub API route a running server asks for its own session (end time, node, job).
SESSION_PATH = "hpcgate/session"


def ready_payload(host: str, port: int, server_name: str, node: str = "") -> dict[str, Any]:
    """The body of the address report (and, without ``server_name``, of the connection file).

    ``node``: the name of the node the server runs on (Slurm's ``SLURMD_NODENAME``, else
    the host name), for the user's progress messages; the hub then needs no scheduler
    query to say where the server runs. Left out when empty (a hub older than this key
    refuses unknown keys: :func:`hpcgate.singleuser.report_to_hub` then reports again
    without it).
    """
    payload: dict[str, Any] = {"host": host, "port": port, "server_name": server_name}
    if node:
        payload["node"] = node
    return payload
