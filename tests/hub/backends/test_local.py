"""The local backend's view of a server process it did not start itself (after a hub restart)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from hpcgate.catalog import default_catalog
from hpcgate.hub.backends.base import BackendContext, JobHandle, JobState
from hpcgate.hub.backends.local import LocalBackend


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


async def test_an_ended_server_waiting_to_be_reaped_is_not_running(tmp_path):
    catalog = default_catalog()
    name = next(n for n, s in catalog.systems.items() if s.kind == "local")
    backend = LocalBackend(name, catalog.systems[name], BackendContext(state_dir=str(tmp_path)))
    server = subprocess.Popen(["sleep", "600"])
    try:
        # as the hub stores it at submit; this backend instance did not start it (a restarted hub)
        handle = JobHandle(job_id=str(server.pid), extra={"start_time": start_time(server.pid)})
        assert (await backend.status([handle]))[handle.job_id].state is JobState.RUNNING
        server.kill()
        deadline = time.monotonic() + 10
        while process_state(server.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(server.pid) == "Z"  # ended, not reaped yet: its PID and start time remain
        assert handle.job_id not in await backend.status([handle])  # i.e. DONE (only DONE is left out)
        await backend.cancel(handle)  # nothing to signal
    finally:
        server.kill()
        server.wait()
