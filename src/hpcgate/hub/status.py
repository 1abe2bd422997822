"""StatusCache: one batched status query per system per interval, shared by all spawners.

The kubespawner "reflector" idea for batch systems: N servers on a system cost one
``squeue`` per interval, not N. Spawners ask :meth:`StatusCache.get`; whoever asks when
the answer is stale triggers one refresh that every concurrent caller awaits.

Rules (they are the point of this class):

- A failed or timed-out query makes every watched job UNKNOWN. UNKNOWN never stops a
  server. Failures back off exponentially (with jitter) up to ``max_backoff``.
- A job missing from an answer is asked about once more through
  :meth:`Backend.confirm_ended` before it is reported DONE.
- DONE is final: a job reported DONE leaves the batch (later queries do not name it)
  and :meth:`StatusCache.get` keeps answering DONE for it without a query.
- Jobs someone follows (:meth:`StatusCache.follow`) are queried every interval by the
  cache itself, not only when a spawner asks: a job that ends behind the hub's back
  (``scancel`` outside the hub, a node failure, the time limit) is noticed within one
  interval of the scheduler saying so, and its follower is called once with the final
  status. Still one query per system per interval, shared by all jobs.
- :meth:`StatusCache.get_fresh` is the one exception: a spawner whose server reported
  its address before any query saw the job run asks once for an answer begun after the
  report (to name the node); concurrent askers share it, a backoff is respected.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from .backends.base import Backend, JobHandle, JobState, JobStatus, StatusUnavailable

log = logging.getLogger("hpcgate.status")


class StatusCache:
    def __init__(
        self,
        backend: Backend,
        interval: float,
        *,
        query_timeout: float = 30.0,
        max_backoff: float | None = None,
        clock: Callable[[], float] | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ):
        self.backend = backend
        self.log = logger or log
        self.interval = interval
        self.query_timeout = query_timeout
        # a scheduler that is back should be noticed within about a minute, whatever
        # the interval: long backoffs leave servers UNKNOWN (and spawns waiting) for long
        self.max_backoff = max_backoff if max_backoff is not None else max(60.0, 6 * interval)
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._watched: dict[str, JobHandle] = {}
        self._statuses: dict[str, JobStatus] = {}
        self._refreshed_at: float | None = None
        #: when the last query began (get_fresh: an answer from a query begun later)
        self._query_began: float | None = None
        self._failures = 0
        self._not_before = 0.0
        #: Number of backend queries made (for tests and benchmarks).
        self.queries = 0
        # One refresh at a time: concurrent callers wait for the same answer
        # instead of each sending their own query.
        self._lock = asyncio.Lock()
        #: job id -> called once with the job's final status (see follow())
        self._followers: dict[str, Callable[[JobStatus], Any]] = {}
        self._follow_task: asyncio.Task[None] | None = None

    def watch(self, handle: JobHandle) -> None:
        """Include ``handle`` in every query from now on (a new job: call at submit).

        A final answer kept for the same id (a recycled PID) is dropped.
        """
        known = self._statuses.get(handle.job_id)
        if known is not None and known.state is JobState.DONE:
            del self._statuses[handle.job_id]
        self._watched[handle.job_id] = handle

    def watched(self) -> list[JobHandle]:
        """The handles included in every query (a new cache for a changed system adopts them)."""
        return list(self._watched.values())

    def take_over(self, old: StatusCache) -> None:
        """Watch and follow what ``old`` did (a changed system gets a new cache)."""
        for handle in old.watched():
            on_end = old._followers.get(handle.job_id)
            if on_end is not None:
                self.follow(handle, on_end)
            else:
                self.watch(handle)
        old._followers.clear()

    def forget(self, job_id: str) -> None:
        self._watched.pop(job_id, None)
        self._statuses.pop(job_id, None)
        self._followers.pop(job_id, None)

    def known(self, job_id: str) -> JobStatus | None:
        """The last answer about ``job_id`` without a query (None if never asked)."""
        return self._statuses.get(job_id)

    def follow(self, handle: JobHandle, on_end: Callable[[JobStatus], Any]) -> None:
        """Watch ``handle`` and call ``on_end(status)`` once when it is reported DONE.

        From now on the cache queries every interval by itself while any job is
        followed (one query for all of them). ``on_end`` runs in the event loop; a
        coroutine it returns is scheduled. A job already known as DONE is reported at
        the next turn of the loop. :meth:`forget` (or :meth:`unfollow`) ends it.
        """
        self.watch(handle)
        self._followers[handle.job_id] = on_end
        known = self._statuses.get(handle.job_id)
        if known is not None and known.state is JobState.DONE:
            self._notify_ended(handle.job_id, known)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first get() in the loop starts the follower
        if self._follow_task is None or self._follow_task.done():
            self._follow_task = asyncio.ensure_future(self._follow_loop())

    def unfollow(self, job_id: str) -> None:
        self._followers.pop(job_id, None)

    def _notify_ended(self, job_id: str, status: JobStatus) -> None:
        on_end = self._followers.pop(job_id, None)
        if on_end is None:
            return

        def call() -> None:
            try:
                result = on_end(status)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception:  # a follower's bug must not stop the cache
                self.log.exception("Follower of job %s on %s failed", job_id, self.backend.name)

        asyncio.get_running_loop().call_soon(call)

    async def _follow_loop(self) -> None:
        """Refresh every interval (or after the failure backoff) while jobs are followed."""
        while self._followers:
            now = self._clock()
            due = max(
                (self._refreshed_at + self.interval) if self._refreshed_at is not None else now,
                self._not_before if self._failures else now,
            )
            if due > now:
                await asyncio.sleep(due - now)
                continue
            async with self._lock:
                if not self._fresh(self.interval) and (self._failures == 0 or self._clock() >= self._not_before):
                    await self._refresh()
            if not self._watched:
                # every follower's job is final (notified) or forgotten
                await asyncio.sleep(self.interval)

    def _fresh(self, max_age: float) -> bool:
        return self._refreshed_at is not None and self._clock() - self._refreshed_at < max_age

    async def get(self, handle: JobHandle, max_age: float | None = None) -> JobStatus:
        """The status of ``handle`` no older than ``max_age`` (default: the interval).

        During a failure backoff the last answer (UNKNOWN) is returned without a query.
        A job already reported DONE is answered from memory.
        """
        known = self._statuses.get(handle.job_id)
        if known is not None and known.state is JobState.DONE:
            return known
        self.watch(handle)
        if self._followers and (self._follow_task is None or self._follow_task.done()):
            self._follow_task = asyncio.ensure_future(self._follow_loop())
        max_age = self.interval if max_age is None else max_age
        if handle.job_id not in self._statuses or not self._fresh(max_age):
            async with self._lock:
                new = handle.job_id not in self._statuses
                if new or not self._fresh(max_age):
                    # a job never asked about need not wait for the jitter, but a failing
                    # scheduler is left alone for the whole backoff
                    if self._clock() >= self._not_before or (new and self._failures == 0):
                        await self._refresh()
        return self._statuses.get(handle.job_id, JobStatus(JobState.UNKNOWN, "not asked yet"))

    async def get_fresh(self, handle: JobHandle) -> JobStatus:
        """The status of ``handle`` from a query that began after this call.

        For a caller that knows the cached answer is stale (a server reported its address
        before any query saw its job run): :meth:`get` with ``max_age=0`` may answer from
        a query begun earlier, or skip the query during the jitter after the last one.
        Concurrent callers share one query; during a failure backoff the last answer
        (UNKNOWN) is returned without a query. A job already reported DONE is answered
        from memory.
        """
        known = self._statuses.get(handle.job_id)
        if known is not None and known.state is JobState.DONE:
            return known
        asked = self._clock()
        self.watch(handle)
        async with self._lock:
            began = self._query_began
            if self._failures == 0 and (began is None or began < asked):
                await self._refresh()
        return self._statuses.get(handle.job_id, JobStatus(JobState.UNKNOWN, "not asked yet"))

    async def _refresh(self) -> None:
        # let callers that arrive in the same tick join this query instead of the next
        await asyncio.sleep(0)
        self._query_began = self._clock()
        handles = list(self._watched.values())
        if not handles:
            self._refreshed_at = self._clock()
            return
        try:
            answer = await self._query(handles)
            missing = [h for h in handles if h.job_id not in answer]
            if missing:
                confirmed = await self._query(missing, confirm=True)
                answer.update(confirmed)
        except StatusUnavailable as exc:
            self._failures += 1
            delay = min(self.interval * 2**self._failures, self.max_backoff)
            self._not_before = self._clock() + delay * random.uniform(0.8, 1.2)
            self.log.warning(
                "Status of %d job(s) on %s unknown (%s); next query in %.0f s",
                len(handles), self.backend.name, exc, delay,
            )
            unknown = JobStatus(JobState.UNKNOWN, reason=str(exc))
            for h in handles:
                previous = self._statuses.get(h.job_id)
                self._statuses[h.job_id] = JobStatus(
                    JobState.UNKNOWN, unknown.reason, node=previous.node if previous else None
                )
        else:
            self._failures = 0
            # jitter keeps many hubs (or a restarted hub) from querying in lockstep
            self._not_before = self._clock() + self.interval * random.uniform(0.0, 0.1)
            for h in handles:
                status = answer.get(h.job_id, JobStatus(JobState.DONE))
                self._statuses[h.job_id] = status
                if status.state is JobState.DONE:
                    # final: no later query needs to name it (forget() drops the answer)
                    self._watched.pop(h.job_id, None)
                    self._notify_ended(h.job_id, status)
        self._refreshed_at = self._clock()

    async def _query(self, handles: list[JobHandle], confirm: bool = False) -> dict[str, JobStatus]:
        self.queries += 1
        call = self.backend.confirm_ended(handles) if confirm else self.backend.status(handles)
        try:
            return await asyncio.wait_for(call, self.query_timeout)
        except TimeoutError as exc:
            raise StatusUnavailable(f"no answer within {self.query_timeout:.0f} s") from exc
        except OSError as exc:
            raise StatusUnavailable(str(exc)) from exc
