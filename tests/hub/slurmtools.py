"""Helpers and fixtures of the Slurm tests: a test catalog, kernels through the hub.

The ``sandbox`` fixture comes from tests/conftest.py (shared by every test session);
the sandbox's jobs (``squeue``, ``active_jobs``, ``stop_hub_and_jobs``) from
:mod:`harness.sandbox`.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import yaml
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from harness.hub import execute_in_kernel
from hpcgate.sandbox import layout as L
from hpcgate.sandbox.catalog import catalog_data

#: Printed by the job of the ``cluster-broken`` system, which exits at once.
BROKEN_MARK = "hpcgate-test: this partition fails on purpose"
#: What the catalog allows in partition debug beyond what compute1 has (4 CPUs, 4 GiB).
TOO_MANY_CPUS = 2 * L.NODE_CPUS
TOO_MUCH_MEMORY = 2 * L.NODE_MEMORY_MB // 1024


def slurm_catalog_data(lay: L.Layout) -> dict:
    """The sandbox catalog, with limits beyond Slurm's and a system whose jobs fail."""
    data = copy.deepcopy(catalog_data(lay))
    cluster = data["systems"]["cluster"]
    debug = cluster["partitions"]["debug"]["limits"]
    debug["cpus"]["max"] = TOO_MANY_CPUS
    debug["memory"]["max"] = TOO_MUCH_MEMORY
    broken = copy.deepcopy(cluster)
    broken["description"] = "Jobs that exit at once"
    broken["setup"] = [*broken.get("setup", []), f"echo '{BROKEN_MARK}' >&2", "exit 3"]
    broken["partitions"] = {"debug": broken["partitions"]["debug"]}
    data["systems"]["cluster-broken"] = broken
    data["groups"]["everyone"]["grants"].append({"system": "cluster-broken"})
    return data


@pytest.fixture(scope="module")
def slurm_catalog(sandbox, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slurm-catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(slurm_catalog_data(sandbox.layout), sort_keys=False))
    return path


def run_code(hub, user: str, code: str, timeout: float = 60, kernel: str = "python3") -> str:
    """Start a ``kernel`` (kernelspec name) in ``user``'s lab through the hub and run
    ``code``; its stdout."""
    return asyncio.run(_run_code(hub, user, code, timeout, kernel))


async def _run_code(hub, user: str, code: str, timeout: float, kernel_name: str = "python3") -> str:
    r = hub.request("POST", f"/user/{user}/api/kernels", json={"name": kernel_name}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    try:
        url = hub.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel}/channels"
        request = HTTPRequest(url, headers={"Authorization": f"token {hub.token}"})
        ws = await asyncio.wait_for(websocket_connect(request), timeout)
        try:
            return await execute_in_kernel(ws, user, code, timeout)
        finally:
            ws.close()
    finally:
        hub.request("DELETE", f"/user/{user}/api/kernels/{kernel}", timeout=30)
