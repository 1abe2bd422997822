"""The scheduler's own state of a system (sinfo + scontrol show reservation) from the
sandbox's real Slurm: a partition set down, a maintenance reservation on its node."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from hpcgate.catalog import LaunchError, UserInfo, load_catalog
from hpcgate.hub.backends.base import BackendContext, StatusUnavailable
from hpcgate.hub.backends.slurm import SlurmBackend
from hpcgate.hub.health import HealthCache, partition_state, refuse_if_closed
from hpcgate.hub.status import StatusCache
from hpcgate.remote.pool import SSHPool
from hpcgate.sandbox import layout as L
from tests.hub.backends.slurm.test_backend import submit

pytestmark = pytest.mark.sandbox


@pytest.fixture
async def backend(slurm_catalog, tmp_path):
    catalog = load_catalog(slurm_catalog)
    backend = SlurmBackend("cluster", catalog.systems["cluster"], BackendContext(state_dir=str(tmp_path)), pool=SSHPool())
    backend.catalog = catalog
    backend.submitted = []
    yield backend
    for handle in backend.submitted:
        await backend.cancel(handle)
    await backend.close()


async def test_partition_down_and_maintenance_reservation_are_seen_in_one_query(backend, sandbox):
    # health queries run as an account that logs in: the owner of a job seen by a status query
    handle = await submit(backend, "alice", "hpcg-alice", ["sleep", "120"])
    await StatusCache(backend, 1).get(handle)
    cache = HealthCache("cluster", backend.health, interval=3600)
    health = await cache.get()
    assert health is not None and "debug" in health.partitions
    debug = health.partitions["debug"]
    assert debug.availability == "up" and debug.nodes_total == 1 and not debug.reservations
    # within the interval every caller shares that answer: no second query
    await cache.get()
    assert cache.queries == 1 and backend.commands["sinfo"] == 1

    other = [p for p in L.PARTITIONS if p != "debug"][0]
    sandbox.run_in("login", ["scontrol", "update", f"PartitionName={other}", "State=DOWN"])
    sandbox.run_in("login", ["scontrol", "create", "reservation", "ReservationName=hpcg-maint", "StartTime=now",
                             "Duration=30", f"Nodes={L.COMPUTE_HOST}", "Users=root", "Flags=MAINT,IGNORE_JOBS"])
    try:
        health = await HealthCache("cluster", backend.health, interval=1).get()
        assert health.partitions[other].availability == "down"
        assert any("maintenance reservation (hpcg-maint)" in r for r in health.partitions["debug"].reservations)
        catalog = backend.catalog
        state = partition_state(catalog, "cluster", "debug", health, datetime.datetime.now(datetime.UTC))
        assert state.state == "degraded" and "hpcg-maint" in state.sentence
        request = catalog.validate(UserInfo("alice"), {"system": "cluster", "partition": other})
        with pytest.raises(LaunchError, match=f"Partition {other} of cluster is down at the scheduler"):
            refuse_if_closed(catalog, request, health)
    finally:
        sandbox.run_in("login", ["scontrol", "delete", "ReservationName=hpcg-maint"], check=False)
        sandbox.run_in("login", ["scontrol", "update", f"PartitionName={other}", "State=UP"], check=False)


async def test_a_controller_that_cannot_answer_is_status_unavailable_and_shows_nothing(backend, sandbox):
    # the backend raises only what backends/base.py defines; the cache logs it and says None
    handle = await submit(backend, "alice", "hpcg-alice", ["sleep", "120"])
    await StatusCache(backend, 1).get(handle)
    sandbox.stop_slurmctld()
    try:
        # both ask at once: each sinfo waits out Slurm's own connect retries (~20 s here)
        direct, cached = await asyncio.gather(
            backend.health(), HealthCache("cluster", backend.health, interval=1, timeout=60).get(),
            return_exceptions=True,
        )
        assert isinstance(direct, StatusUnavailable), direct
        assert "sinfo on" in str(direct), direct
        assert cached is None
    finally:
        sandbox.start_slurmctld()
