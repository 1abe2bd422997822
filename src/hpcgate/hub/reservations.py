"""ReservationCache: a system's scheduler reservations, read once per interval for all users.

The form offers the reservations a user may start in (Slurm: ``scontrol show
reservation``). Asking the scheduler at every form render would put one controller RPC
(and one SSH command) behind every page view; instead a system's whole list is read
at most once per ``HPCGate.reservations_interval`` (the StatusCache idea) and every
user's answer comes from memory (:func:`usable`).

Rules:

- Whoever asks when the list is older than the interval triggers one query; concurrent
  askers wait for that same query (one lock), later ones read the list in memory.
- A failed or timed-out query keeps the last known list (logged); it is asked again
  only after the interval. Before the first good answer the list is empty: the form
  offers no reservation, and a launch naming one is refused with the catalog's
  sentence.
- :func:`usable` keeps what the user's account may use (the reservation's users),
  now or starting within ``ahead`` seconds, without maintenance reservations and
  those that admit by Unix group only (hpcgate does not know a user's groups on the
  system). Partitions and projects are matched by the catalog
  (:meth:`~hpcgate.catalog.Catalog.offer`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ..catalog import Reservation
from .backends.base import SchedulerReservation, StatusUnavailable

log = logging.getLogger("hpcgate.reservations")


def usable(found: Iterable[SchedulerReservation], account: str, now: float, ahead: float) -> tuple[Reservation, ...]:
    """The reservations ``account`` may start in: admitted, not over, begun or beginning
    within ``ahead`` seconds; in the scheduler's order."""
    return tuple(
        r.for_catalog() for r in found if r.admits(account) and r.end > now and r.start <= now + ahead
    )


class ReservationCache:
    """The reservations of one system, read at most once per ``interval`` seconds."""

    def __init__(
        self,
        system: str,
        query: Callable[[str], Awaitable[list[SchedulerReservation]]],
        interval: float,
        *,
        query_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ):
        self.system = system
        self.query = query
        self.interval = interval
        self.query_timeout = query_timeout
        self.log = logger or log
        self._clock = clock
        self._found: list[SchedulerReservation] = []
        self._asked_at: float | None = None
        self._lock = asyncio.Lock()
        #: Number of queries sent (tests and benchmarks).
        self.queries = 0

    def _due(self) -> bool:
        return self._asked_at is None or self._clock() - self._asked_at >= self.interval

    async def get(self, asking: str) -> list[SchedulerReservation]:
        """Every reservation of the system (``asking``: the account whose request needs
        them, for backends that read as the user); queried if the list is due."""
        if self._due():
            async with self._lock:
                if self._due():
                    await self._refresh(asking)
        return list(self._found)

    async def _refresh(self, asking: str) -> None:
        self.queries += 1
        try:
            found = await asyncio.wait_for(self.query(asking), self.query_timeout)
        except TimeoutError:
            self.log.warning("Reservations of %s: no answer within %.0f s; keeping the last known",
                             self.system, self.query_timeout)
        except (StatusUnavailable, OSError) as exc:
            self.log.warning("Reservations of %s not read (%s); keeping the last known", self.system, exc)
        else:
            self._found = list(found)
            self.log.info("Reservations of %s read (query %d): %d", self.system, self.queries, len(found))
        self._asked_at = self._clock()
