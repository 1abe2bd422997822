"""The spawn form's HTML, versioned spawner state, and the StatusCache rules."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

from hpcgate.catalog import UserInfo, default_catalog, parse_catalog
from hpcgate.hub.backends.base import Backend, BackendContext, JobHandle, JobState, JobStatus, StatusUnavailable
from hpcgate.hub.backends.slurm.parse import job_status
from hpcgate.hub.form import render_form
from hpcgate.hub.spawner import STATE_VERSION, ended_sentence, migrate_state
from hpcgate.hub.status import StatusCache

HOSTILE = parse_catalog(
    """
systems:
  evil:
    kind: local
    description: "</script><script>alert(1)</script> & <b>bold</b>"
    partitions:
      p1: {description: "<img src=x onerror=alert(2)>"}
groups: {all: {all_users: true, grants: [{system: evil}]}}
"""
)


def test_form_escapes_catalog_text_and_embeds_the_offer():
    page = render_form(HOSTILE.offer(UserInfo("u")), {})
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    blob = re.search(r'<script type="application/json" id="hpcgate-offer">(.*?)</script>', page, re.S).group(1)
    assert json.loads(blob)["systems"][0]["description"].startswith("</script>")


def test_form_preselects_previous_choices_and_shows_limits():
    page = render_form(default_catalog().offer(UserInfo("u")), {"partition": "long", "cpus": 2, "memory": 99})
    assert '<option value="long" selected>' in page
    assert re.search(r'name="cpus" min="1" max="2" value="2"', page)
    # an out-of-range previous value falls back to the default
    assert re.search(r'name="memory" min="1" max="8" value="2"', page)
    assert "from 1 to 8 GiB, default 2" in page


def test_form_for_a_user_with_no_grant_says_what_to_do():
    empty = parse_catalog("systems: {l: {kind: local, partitions: {p: {}}}}")
    assert "Ask your centre's support" in render_form(empty.offer(UserInfo("u")), {})


def test_state_migrates_from_layout_0():
    old = {"job_id": "123", "host": "login1", "system": "cluster"}
    new = migrate_state(old)
    assert new["hpcgate_state_version"] == STATE_VERSION
    assert new["job"] == {"job_id": "123", "host": "login1", "extra": {}}
    assert new["system"] == "cluster"
    assert JobHandle.from_state(new["job"]).host == "login1"
    assert migrate_state({}) == {}


class ScriptedBackend(Backend):
    """A stand-in scheduler whose answers the test scripts (the cache logic is under test)."""

    kind = "scripted"

    def __init__(self):
        super().__init__("scripted", default_catalog().systems["local"], BackendContext(state_dir="/nonexistent"))
        self.answers: list = []
        self.calls: list[list[str]] = []

    async def status(self, handles):
        self.calls.append([h.job_id for h in handles])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    async def submit(self, spec):  # pragma: no cover - not used
        raise NotImplementedError

    async def cancel(self, handle):  # pragma: no cover - not used
        raise NotImplementedError


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


async def test_one_query_serves_every_spawner_of_a_system():
    backend, clock = ScriptedBackend(), Clock()
    cache = StatusCache(backend, interval=10, clock=clock)
    handles = [JobHandle(str(i)) for i in range(50)]
    for h in handles:
        cache.watch(h)
    backend.answers = [{h.job_id: JobStatus(JobState.RUNNING) for h in handles}]
    results = await asyncio.gather(*(cache.get(h) for h in handles))
    assert all(r.state is JobState.RUNNING for r in results)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 50
    clock.now = 5  # still fresh: no new query
    await cache.get(handles[0])
    assert len(backend.calls) == 1


async def test_scheduler_error_is_unknown_and_backs_off():
    backend, clock = ScriptedBackend(), Clock()
    cache = StatusCache(backend, interval=10, clock=clock)
    h = JobHandle("7")
    backend.answers = [{"7": JobStatus(JobState.RUNNING, node="n1")}, StatusUnavailable("Socket timed out")]
    assert (await cache.get(h)).state is JobState.RUNNING
    clock.now = 11
    status = await cache.get(h)
    assert status.state is JobState.UNKNOWN and "Socket timed out" in status.reason
    assert status.node == "n1"
    clock.now = 22  # within the backoff (>= 16 s after the failure): no query
    assert (await cache.get(h)).state is JobState.UNKNOWN
    assert len(backend.calls) == 2


async def test_get_fresh_answers_from_a_query_begun_after_the_call():
    """A server reported before any query saw its job run: get(max_age=0) may answer
    from the query just made (within its jitter the cache does not query again, and a
    query in flight began before the report); get_fresh queries once more, shared by
    concurrent callers, and not during a failure backoff."""
    backend, clock = ScriptedBackend(), Clock()
    cache = StatusCache(backend, interval=10, clock=clock)
    h = JobHandle("9")
    backend.answers = [{"9": JobStatus(JobState.PENDING)}]
    assert (await cache.get(h)).state is JobState.PENDING
    clock.now = 0.05  # the job started and its server reported, inside the jitter
    backend.answers = [{"9": JobStatus(JobState.RUNNING, node="compute1")}]
    both = await asyncio.gather(cache.get_fresh(h), cache.get_fresh(h))
    assert [(s.state, s.node) for s in both] == [(JobState.RUNNING, "compute1")] * 2
    assert len(backend.calls) == 2
    # a failing scheduler is left alone for its backoff
    clock.now = 20
    backend.answers = [StatusUnavailable("Socket timed out")]
    assert (await cache.get(h)).state is JobState.UNKNOWN
    clock.now = 21
    assert (await cache.get_fresh(h)).state is JobState.UNKNOWN
    assert len(backend.calls) == 3


async def test_a_job_missing_once_is_asked_again_before_done():
    backend, clock = ScriptedBackend(), Clock()
    cache = StatusCache(backend, interval=10, clock=clock)
    a, b = JobHandle("a"), JobHandle("b")
    cache.watch(a)
    cache.watch(b)
    # b vanishes from the first answer but the confirmation still finds it
    backend.answers = [{"a": JobStatus(JobState.RUNNING)}, {"b": JobStatus(JobState.RUNNING)}]
    assert (await cache.get(b)).state is JobState.RUNNING
    assert backend.calls == [["a", "b"], ["b"]]
    clock.now = 20
    backend.answers = [{"a": JobStatus(JobState.RUNNING)}, {}]
    assert (await cache.get(b)).state is JobState.DONE
    assert (await cache.get(a)).state is JobState.RUNNING


def test_check_command_prints_groups_and_rejects_broken_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("systems: {l: {kind: local, partitions: {p: {}}}}\ngroups: {g: {grants: [{system: l}]}}\n")
    out = subprocess.run([sys.executable, "-m", "hpcgate.cli", "check", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "group g (members of JupyterHub group 'g')" in out.stdout
    assert "p: nodes 1-1" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("systems: {l: {kind: local}}\n")
    out = subprocess.run([sys.executable, "-m", "hpcgate.cli", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{bad}: systems.l.partitions" in out.stderr


async def test_a_followed_job_that_ends_is_reported_without_anyone_asking():
    """follow(): the cache queries by itself every interval and calls the follower
    once with the final status (a job cancelled behind the hub's back)."""
    backend = ScriptedBackend()
    cache = StatusCache(backend, interval=0.05)
    ended: list = []
    running = {"9": JobStatus(JobState.RUNNING)}
    gone = JobStatus(JobState.DONE, reason="CANCELLED", exit_code=0)
    # running twice, then gone from squeue and confirmed gone (DONE with the reason)
    backend.answers = [running, running, {}, {"9": gone}]
    cache.follow(JobHandle("9"), ended.append)
    for _ in range(100):
        if ended:
            break
        await asyncio.sleep(0.02)
    assert ended == [gone]
    assert backend.calls == [["9"], ["9"], ["9"], ["9"]]
    await asyncio.sleep(0.2)  # nobody follows any more: no further queries
    assert len(backend.calls) == 4 and ended == [gone]


def test_the_home_pages_sentence_for_a_job_that_ended_names_a_walltime():
    # Slurm's TIMEOUT (squeue/sacct words, parsed by backends/slurm/parse.py)
    timeout = job_status("TIMEOUT", "TimeLimit", "compute1", "0:15")
    sentence = ended_sentence("42", "cluster", timeout, when=0)
    assert "job 42 on cluster reached its walltime" in sentence and "1970-01-01 00:00 UTC" in sentence
    cancelled = job_status("CANCELLED by 1001", "None", "compute1", "0:15")
    sentence = ended_sentence("43", "cluster", cancelled)
    assert "walltime" not in sentence and "(CANCELLED)" in sentence and "without a stop from this hub" in sentence


async def test_an_address_report_is_taken_while_a_status_query_still_waits():
    # a start waits for its server's address and asks the status cache meanwhile; under
    # a storm that query waits its turn for seconds: the report must not wait for it,
    # and the query goes on for the other spawners sharing it (it is not cancelled)
    from hpcgate.hub.spawner import HPCSpawner

    spawner = HPCSpawner()
    spawner._address = asyncio.get_running_loop().create_future()
    release, began = asyncio.Event(), asyncio.Event()
    outcome = []

    async def shared_query():
        began.set()
        await release.wait()
        outcome.append("answered")
        return JobStatus(JobState.RUNNING, node="compute1")

    waiting = asyncio.ensure_future(spawner._unless_reported(shared_query()))
    await began.wait()
    spawner.report_address("10.250.2.2", 40000, "compute1")
    assert await asyncio.wait_for(waiting, 5) is None
    assert spawner._address.result() == ("10.250.2.2", 40000)
    assert spawner._reported_node == "compute1"
    release.set()
    for _ in range(100):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome == ["answered"]
    # and without a report the step's own answer comes back
    spawner._address = asyncio.get_running_loop().create_future()
    status = await spawner._unless_reported(shared_query())
    assert status is not None and status.node == "compute1"
