"""SlurmBackend and StatusCache against the sandbox's sshd and Slurm, without a hub."""

from __future__ import annotations

import asyncio

import pytest

from harness.sandbox import active_jobs, squeue
from hpcgate.catalog import UserInfo, load_catalog
from hpcgate.hub.backends.base import BackendContext, JobHandle, JobSpec, JobState
from hpcgate.hub.backends.slurm import SlurmBackend
from hpcgate.hub.status import StatusCache
from hpcgate.remote import SSHPool

pytestmark = pytest.mark.sandbox

TOKEN = "hpcgate-test-token-0123456789abcdef"


@pytest.fixture
async def backend(slurm_catalog, tmp_path):
    catalog = load_catalog(slurm_catalog)
    backend = SlurmBackend("cluster", catalog.systems["cluster"], BackendContext(state_dir=str(tmp_path)), pool=SSHPool())
    backend.catalog = catalog
    submitted: list[JobHandle] = []
    backend.submitted = submitted
    yield backend
    for handle in submitted:
        await backend.cancel(handle)
    await backend.close()


async def submit(backend, user: str, account: str, command: list[str], **options) -> JobHandle:
    request = backend.catalog.validate(UserInfo(user), {"system": "cluster", **options})
    spec = JobSpec(
        request=request,
        hub_user=user,
        account=account,
        server_name="",
        env={"JUPYTERHUB_API_TOKEN": TOKEN, "HPCGATE_TEST": "it's $HOME `x`"},
        command=command,
        workdir="~",
    )
    handle = await backend.submit(spec)
    backend.submitted.append(handle)
    return handle


async def wait_state(cache: StatusCache, handle: JobHandle, state: JobState, timeout: float = 60):
    for _ in range(int(timeout / 0.3)):
        status = await cache.get(handle, max_age=0.2)
        if status.state is state:
            return status
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {handle.job_id} never reached {state}; last: {status}")


async def test_environment_reaches_the_job_but_not_slurms_copy(backend, sandbox):
    script = 'echo "token=$JUPYTERHUB_API_TOKEN"; echo "test=$HPCGATE_TEST"; ls ~/.hpcgate/run; sleep 300'
    handle = await submit(backend, "alice", "hpcg-alice", ["sh", "-c", script])
    cache = StatusCache(backend, 1)
    status = await wait_state(cache, handle, JobState.RUNNING)
    assert status.node == "compute1"
    for _ in range(50):
        log = await backend.log_tail(handle)
        if "test=" in log:
            break
        await asyncio.sleep(0.2)
    assert f"token={TOKEN}" in log
    assert "test=it's $HOME `x`" in log
    assert f"{handle.extra['run_id']}.env" not in log.split("test=")[1]  # removed before the command ran
    stored = sandbox.run_in("login", ["scontrol", "write", "batch_script", handle.job_id, "-"], user="hpcg-alice")
    assert "#SBATCH --partition=debug" in stored.stdout
    assert TOKEN not in stored.stdout
    await backend.cancel(handle)
    assert not active_jobs(sandbox, "hpcg-alice")


async def test_one_squeue_for_the_jobs_of_two_users(backend, sandbox):
    handles = [
        await submit(backend, "alice", "hpcg-alice", ["sleep", "300"]),
        await submit(backend, "bob", "hpcg-bob", ["sleep", "300"]),
        await submit(backend, "alice", "hpcg-alice", ["sleep", "300"]),
    ]
    cache = StatusCache(backend, 30)
    before = backend.commands.get("squeue", 0)
    statuses = await asyncio.gather(*(cache.get(h) for h in handles))
    assert backend.commands.get("squeue", 0) - before == 1
    assert all(s.state in (JobState.PENDING, JobState.RUNNING) for s in statuses), statuses
    # a cancelled job is answered DONE (the queue keeps it a while, as CANCELLED)
    await backend.cancel(handles[1])
    status = await wait_state(cache, handles[1], JobState.DONE)
    assert "CANCELLED" in status.reason
    # DONE is final: later batches leave it out, and it stays DONE
    assert handles[1].job_id not in cache._watched
    assert (await cache.get(handles[1], max_age=0)).state is JobState.DONE
    assert (await cache.get(handles[0], max_age=0)).state in (JobState.PENDING, JobState.RUNNING)


async def test_a_job_slurm_forgot_is_confirmed_ended(backend):
    # an id Slurm never had: missing from the answer, missing again when confirmed
    ghost = JobHandle(job_id="987654", host=backend.system.hosts[0], extra={"account": "hpcg-alice"})
    cache = StatusCache(backend, 1)
    status = await cache.get(ghost)
    assert status.state is JobState.DONE
    assert backend.commands["squeue"] >= 2  # the batch query, then the owner's confirmation


async def test_cancel_a_pending_job_removes_its_files(backend, sandbox):
    # more CPUs than compute1 has: pending for ever (stuck)
    handle = await submit(backend, "alice", "hpcg-alice", ["sleep", "300"], cpus=8)
    cache = StatusCache(backend, 1)
    for _ in range(60):
        status = await cache.get(handle, max_age=0.2)
        if status.stuck:
            break
        await asyncio.sleep(0.5)
    assert status.state is JobState.PENDING and "PartitionConfig" in status.stuck
    run_dir = sandbox.run_in("login", ["sh", "-c", "ls ~/.hpcgate/run"], user="hpcg-alice").stdout
    assert f"{handle.extra['run_id']}.env" in run_dir
    await backend.cancel(handle)
    assert handle.job_id not in [j["id"] for j in active_jobs(sandbox, "hpcg-alice")]
    run_dir = sandbox.run_in("login", ["sh", "-c", "ls ~/.hpcgate/run"], user="hpcg-alice").stdout
    assert f"{handle.extra['run_id']}.env" not in run_dir
    assert [j["state"] for j in squeue(sandbox, ("hpcg-alice",)) if j["id"] == handle.job_id] == ["CANCELLED"]
