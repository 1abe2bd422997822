"""System status for users: maintenance (the catalog), the scheduler's own state, announcements.

- **Maintenance** is declared by admins in the catalog (``maintenance: {until, message}``
  on a system or a partition). Until then a launch there is refused with a sentence
  (:func:`refuse_if_closed`); running servers are not touched.
- **The scheduler's state** (partitions down or drained, nodes available, reservations)
  comes from the system's backend (:meth:`Backend.health`), one query per system per
  interval shared by every user (:class:`HealthCache`, the StatusCache pattern). A
  partition that is down counts as closed; drained or without free nodes, or under a
  reservation, as *degraded* (a launch may wait in the queue; it is not refused).
- **Announcements** (catalog ``announcements``) appear on the hub's pages
  (:func:`announcement_html` as ``JupyterHub.template_vars["announcement"]``) and in
  every lab (``GET /hub/api/hpcgate/announcements``, read by the lab's extension).

Every catalog or scheduler text put into HTML is escaped here.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, LaunchError, LaunchRequest, Offer
from .backends.base import StatusUnavailable

log = logging.getLogger("hpcgate.health")

AVAILABLE, DEGRADED, MAINTENANCE, DOWN = "available", "degraded", "maintenance", "down"


@dataclass(frozen=True)
class PartitionHealth:
    """What the scheduler says about one partition."""

    #: ``up``, ``down``, ``drain`` or ``inactive`` (Slurm's partition availability)
    availability: str = "up"
    nodes_total: int = 0
    #: nodes that can take a job now (idle or mixed)
    nodes_free: int = 0
    #: active reservations covering the partition's nodes, as sentences
    reservations: tuple[str, ...] = ()


@dataclass(frozen=True)
class SystemHealth:
    """One answer of a system's scheduler (:meth:`Backend.health`)."""

    partitions: dict[str, PartitionHealth] = field(default_factory=dict)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class HealthCache:
    """One scheduler health query per system per ``interval``, shared by every caller.

    ``query``: the backend's :meth:`health`. A failing query leaves the system's state
    unknown (no degraded or down shown, nothing refused for it); it never raises.
    """

    def __init__(self, name: str, query: Callable[[], Awaitable[SystemHealth | None]], interval: float,
                 timeout: float = 20.0):
        self.name = name
        self._query = query
        self.interval = interval
        self.timeout = timeout
        self._answer: SystemHealth | None = None
        self._at: float | None = None
        self._lock = asyncio.Lock()
        #: the backend whose query this is (the runtime rebuilds the cache with it)
        self.backend: Any = None
        #: queries made (tests and benchmarks)
        self.queries = 0

    def last(self) -> SystemHealth | None:
        """The last answer, without a query (None: none yet or the last one failed)."""
        return self._answer

    async def get(self) -> SystemHealth | None:
        loop = asyncio.get_running_loop()
        if self._at is not None and loop.time() - self._at < self.interval:
            return self._answer
        async with self._lock:
            if self._at is None or loop.time() - self._at >= self.interval:
                self.queries += 1
                try:
                    self._answer = await asyncio.wait_for(self._query(), self.timeout)
                except (StatusUnavailable, TimeoutError) as exc:
                    log.warning("Health of %s unknown: %s", self.name, exc)
                    self._answer = None
                self._at = loop.time()
        return self._answer


@dataclass(frozen=True)
class State:
    """A system's or partition's state as users see it."""

    state: str
    sentence: str = ""

    def as_json(self) -> dict[str, str]:
        return {"state": self.state, "sentence": self.sentence}


def partition_state(
    catalog: Catalog, system: str, partition: str, health: SystemHealth | None, now: datetime.datetime
) -> State:
    sys_config = catalog.systems[system]
    for what, maintenance in (
        (f"System {system}", sys_config.maintenance),
        (f"Partition {partition} of {system}", sys_config.partitions[partition].maintenance),
    ):
        if maintenance is not None and maintenance.active(now):
            return State(MAINTENANCE, maintenance.sentence(what))
    ph = health.partitions.get(partition) if health else None
    if ph is None:
        return State(AVAILABLE)
    if ph.availability in ("down", "inactive"):
        return State(DOWN, f"Partition {partition} of {system} is {ph.availability} at the scheduler.")
    notes = []
    if ph.availability == "drain":
        notes.append("takes no new jobs for now (drained)")
    elif ph.nodes_total and ph.nodes_free == 0:
        notes.append(f"has no free node now (of {ph.nodes_total}); a new server waits in the queue")
    notes += list(ph.reservations)
    if notes:
        return State(DEGRADED, f"Partition {partition} of {system} " + "; ".join(notes) + ".")
    return State(AVAILABLE, f"{ph.nodes_free} of {ph.nodes_total} nodes free." if ph.nodes_total else "")


def system_state(catalog: Catalog, system: str, partitions: list[str], health: SystemHealth | None,
                 now: datetime.datetime) -> tuple[State, dict[str, State]]:
    """The system's state and each of ``partitions``' (those the user may use)."""
    parts = {p: partition_state(catalog, system, p, health, now) for p in partitions}
    maintenance = catalog.systems[system].maintenance
    if maintenance is not None and maintenance.active(now):
        return State(MAINTENANCE, maintenance.sentence(f"System {system}")), parts
    states = {s.state for s in parts.values()}
    if states and states <= {MAINTENANCE, DOWN}:
        return State(DEGRADED, f"No partition of {system} takes new servers now."), parts
    if states - {AVAILABLE}:
        return State(DEGRADED, f"Some partitions of {system} are limited now."), parts
    return State(AVAILABLE), parts


def offer_status(catalog: Catalog, offer: Offer, health: Callable[[str], SystemHealth | None],
                 now: datetime.datetime | None = None) -> dict[str, Any]:
    """``{system: {state, sentence, partitions: {name: {state, sentence}}}}`` for an offer."""
    now = now or now_utc()
    out: dict[str, Any] = {}
    for s in offer.systems:
        state, parts = system_state(catalog, s.name, [p.name for p in s.partitions], health(s.name), now)
        out[s.name] = {**state.as_json(), "partitions": {n: p.as_json() for n, p in parts.items()}}
    return out


def refuse_if_closed(catalog: Catalog, request: LaunchRequest, health: SystemHealth | None,
                     now: datetime.datetime | None = None) -> None:
    """Raise :class:`LaunchError` (a sentence) if the request's partition takes no new servers."""
    state = partition_state(catalog, request.system, request.partition, health, now or now_utc())
    if state.state in (MAINTENANCE, DOWN):
        raise LaunchError(f"{state.sentence} Choose another system or partition, or start your server after that.")


def status_html(status: dict[str, Any]) -> str:
    """The form's block: one line per system (and partition) that is not simply available."""
    lines = []
    for system, s in status.items():
        if s["state"] != AVAILABLE:
            lines.append(f'<li class="hpcgate-state-{html.escape(s["state"])}" data-system="{html.escape(system)}">'
                         f'<strong>{html.escape(system)}</strong>: {html.escape(s["state"])}. {html.escape(s["sentence"])}</li>')
        for name, p in s["partitions"].items():
            if p["state"] != AVAILABLE and p["sentence"] != s["sentence"]:
                lines.append(f'<li class="hpcgate-state-{html.escape(p["state"])}" data-system="{html.escape(system)}" '
                             f'data-partition="{html.escape(name)}">{html.escape(p["sentence"])}</li>')
    if not lines:
        return ""
    return '<div class="alert alert-info hpcgate-status"><ul class="list-unstyled">' + "".join(lines) + "</ul></div>"


def announcements(catalog: Catalog, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    now = now or now_utc()
    return [
        {"message": a.message, "until": a.until.isoformat() if a.until else None}
        for a in catalog.model.announcements
        if a.active(now)
    ]


def announcement_html(user: Any = None) -> str:
    """``JupyterHub.template_vars["announcement"]``: the catalog's announcements, escaped."""
    from .runtime import HPCGate

    try:
        current = announcements(HPCGate.for_hub().catalog())
    except Exception as exc:
        log.warning("No announcements: %s", exc)
        return ""
    return "<br>".join(f'<span class="hpcgate-announcement">{html.escape(a["message"])}</span>' for a in current)
