"""hpcgate's Prometheus metrics, served beside JupyterHub's own on ``/hub/metrics``.

JupyterHub serves prometheus_client's default registry; everything here is registered
there, so one scrape of ``/hub/metrics`` (a token with the ``read:metrics`` scope)
returns both. Names (all ``hpcgate_``):

- ``hpcgate_spawns_total{system, partition, outcome}``: finished starts; ``outcome`` is
  ``success``, ``failure`` or ``cancelled``.
- ``hpcgate_spawn_phase_seconds{system, phase}``: how long each phase of a start took;
  ``phase`` is ``submit`` (start until the system accepted the job), ``queue_wait``
  (accepted until seen running), ``lab_start`` (running until the lab reported its
  address), ``tunnel`` (address until the forward answered; tunnelled systems only)
  and ``routing`` (the spawner's start returned until JupyterHub routed the server).
- ``hpcgate_running_servers{system, partition}``: servers ready now (read at scrape time
  from the hub's live spawners).
- ``hpcgate_scheduler_query_seconds{system}`` and
  ``hpcgate_scheduler_query_errors_total{system}``: the StatusCache's batched queries.
- ``hpcgate_tunnel_up{system}`` (1 while the system's jump-host connection is up),
  ``hpcgate_tunnel_reconnects_total{system}`` and ``hpcgate_tunnel_forwards{system}``
  (servers forwarded now), read at scrape time from the TunnelManager.

- ``hpcgate_session_energy_wh_total{system, partition, method}`` and
  ``hpcgate_session_co2_grams_total{system, partition}``: energy and CO2 of ended
  sessions (:mod:`hpcgate.energy`; ``method`` is ``measured`` where the scheduler's
  accounting recorded it, else ``estimate``), counted once when a session ends;
  ``hpcgate_sessions_ended_total{system, partition}`` counts those sessions.
- ``hpcgate_running_sessions_energy_wh{system, partition}``: energy of the running
  sessions so far (the estimate; read at scrape time).

The scrape-time values cost one pass over the hub's spawners and tunnels per scrape
(``make bench ARGS=ops`` measures it with 200 servers). Nothing here raises into the
code it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: the phases of a start, in order (label values of ``hpcgate_spawn_phase_seconds``)
PHASES = ("submit", "queue_wait", "lab_start", "tunnel", "routing")
#: outcomes of a start (label values of ``hpcgate_spawns_total``)
OUTCOMES = ("success", "failure", "cancelled")

# batch queues: seconds to hours
_PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf"))
_QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf"))

SPAWNS = Counter(
    "hpcgate_spawns",
    "Finished server starts by system, partition and outcome (success, failure, cancelled).",
    ["system", "partition", "outcome"],
)
SPAWN_PHASE = Histogram(
    "hpcgate_spawn_phase_seconds",
    "Duration of each phase of a server start (submit, queue_wait, lab_start, tunnel, routing).",
    ["system", "phase"],
    buckets=_PHASE_BUCKETS,
)
SCHEDULER_QUERY = Histogram(
    "hpcgate_scheduler_query_seconds",
    "Duration of the batched status queries of a system's scheduler (one per interval).",
    ["system"],
    buckets=_QUERY_BUCKETS,
)
SCHEDULER_ERRORS = Counter(
    "hpcgate_scheduler_query_errors",
    "Batched status queries that failed or timed out (every watched job was UNKNOWN).",
    ["system"],
)

SESSION_ENERGY = Counter(
    "hpcgate_session_energy_wh",
    "Energy of ended sessions in Wh, by system, partition and method (measured, estimate).",
    ["system", "partition", "method"],
)
SESSION_CO2 = Counter(
    "hpcgate_session_co2_grams",
    "CO2e of ended sessions in grams (where a carbon intensity is set), by system and partition.",
    ["system", "partition"],
)
SESSIONS_ENDED = Counter(
    "hpcgate_sessions_ended",
    "Sessions that ended and whose energy was counted, by system and partition.",
    ["system", "partition"],
)

#: every metric name this module exports (the Grafana dashboard may use only these)
METRIC_NAMES = (
    "hpcgate_spawns_total",
    "hpcgate_spawn_phase_seconds",
    "hpcgate_running_servers",
    "hpcgate_scheduler_query_seconds",
    "hpcgate_scheduler_query_errors_total",
    "hpcgate_tunnel_up",
    "hpcgate_tunnel_reconnects_total",
    "hpcgate_tunnel_forwards",
    "hpcgate_session_energy_wh_total",
    "hpcgate_session_co2_grams_total",
    "hpcgate_sessions_ended_total",
    "hpcgate_running_sessions_energy_wh",
)


def observe_phase(system: str, phase: str, seconds: float) -> None:
    """Record one phase of a start (``phase`` one of :data:`PHASES`)."""
    if phase in PHASES and seconds >= 0:
        SPAWN_PHASE.labels(system=system, phase=phase).observe(seconds)


def count_spawn(system: str, partition: str, outcome: str) -> None:
    SPAWNS.labels(system=system, partition=partition, outcome=outcome).inc()


def scheduler_query(system: str, seconds: float, failed: bool) -> None:
    """One batched status query of ``system`` took ``seconds``; ``failed``: no answer."""
    SCHEDULER_QUERY.labels(system=system).observe(seconds)
    if failed:
        SCHEDULER_ERRORS.labels(system=system).inc()


def session_ended(system: str, partition: str, energy: Any) -> None:
    """Count one ended session's :class:`hpcgate.energy.SessionEnergy`."""
    SESSIONS_ENDED.labels(system=system, partition=partition).inc()
    SESSION_ENERGY.labels(system=system, partition=partition, method=energy.method).inc(max(energy.energy_wh, 0.0))
    if energy.co2_g is not None:
        SESSION_CO2.labels(system=system, partition=partition).inc(max(energy.co2_g, 0.0))


class SpawnTimer:
    """The phase clock of one start: :meth:`mark` at each boundary, :meth:`finish` once.

    The spawner calls ``mark("submitted")``, ``mark("running")``, ``mark("address")``,
    ``mark("tunnel")`` and ``mark("returned")``; each mark closes the phase that ended
    there (the first mark of a kind counts). A phase whose start was never marked (the
    job was never seen queued) is measured from the previous boundary that was.
    """

    _ENDS = {"submitted": "submit", "running": "queue_wait", "address": "lab_start", "tunnel": "tunnel"}

    def __init__(self, system: str, partition: str):
        self.system = system
        self.partition = partition
        self.began = time.monotonic()
        self._last = self.began
        self._seen: set[str] = set()
        self._finished = False

    def mark(self, boundary: str) -> None:
        if boundary in self._seen:
            return
        self._seen.add(boundary)
        now = time.monotonic()
        phase = self._ENDS.get(boundary)
        if phase is not None:
            observe_phase(self.system, phase, now - self._last)
        self._last = now

    def finish(self, outcome: str) -> None:
        """The start ended: count it; on success the routing phase ends now."""
        if self._finished:
            return
        self._finished = True
        if outcome == "success" and "returned" in self._seen:
            observe_phase(self.system, "routing", time.monotonic() - self._last)
        count_spawn(self.system, self.partition, outcome)


def watch_start_metrics(spawner: Any, timer: SpawnTimer, task: asyncio.Task | None) -> None:
    """Count the start running as ``task`` when it ends, and time its routing.

    A start that raised is a ``failure``; one cancelled after ``start_timeout`` too
    (JupyterHub gave up), one cancelled earlier is ``cancelled`` (the user's cancel, the
    hub stopping). A start that returned ends its routing phase when JupyterHub's spawn
    future (``spawner._spawn_future``: start, wait until the server answers, add the
    route) is done; that future's failure counts as a failed start.
    """
    if task is None:
        return

    def routed(fut: asyncio.Future) -> None:
        if fut.cancelled():
            timer.finish("cancelled")
        elif fut.exception() is not None:
            timer.finish("failure")
        else:
            timer.finish("success")

    def done(task: asyncio.Task) -> None:
        if task.cancelled():
            timeout = getattr(spawner, "start_timeout", 0) or 0
            timer.finish("failure" if timeout and time.monotonic() - timer.began >= timeout else "cancelled")
            return
        if task.exception() is not None:
            timer.finish("failure")
            return
        timer.mark("returned")
        future = getattr(spawner, "_spawn_future", None)
        if future is None or future.done():
            timer.finish("success")
        else:
            future.add_done_callback(routed)

    task.add_done_callback(done)


class HubCollector(Collector):
    """Scrape-time values: running servers, tunnel state (from the live hub objects).

    ``spawners``: the hub's HPCSpawner objects (a WeakSet the runtime keeps);
    ``tunnels``: a callable giving ``{system: SystemTunnel}``; ``catalog``: a callable
    giving the current catalog (the power figures of the running sessions' energy).
    """

    def __init__(self, spawners: Iterable[Any], tunnels: Any, catalog: Any = None):
        self._spawners = spawners
        self._tunnels = tunnels
        self._catalog = catalog

    def describe(self) -> list[Metric]:
        # no describe-time values: the registry must not call collect() at register time
        return []

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "hpcgate_running_servers", "Servers ready now, by system and partition.", labels=["system", "partition"]
        )
        counts: dict[tuple[str, str], int] = {}
        for spawner in list(self._spawners):
            try:
                if not spawner.system or spawner.job is None or not spawner.ready:
                    continue
                partition = spawner.partition
            except Exception:
                continue
            key = (spawner.system, partition)
            counts[key] = counts.get(key, 0) + 1
        for (system, partition), n in sorted(counts.items()):
            running.add_metric([system, partition], n)
        yield running
        yield self._running_energy()

        up = GaugeMetricFamily("hpcgate_tunnel_up", "1 while the system's jump-host connection is up.", labels=["system"])
        reconnects = CounterMetricFamily(
            "hpcgate_tunnel_reconnects", "Times the system's tunnel connection was re-opened after a loss.", labels=["system"]
        )
        forwards = GaugeMetricFamily(
            "hpcgate_tunnel_forwards", "Server forwards carried by the system's tunnel now.", labels=["system"]
        )
        for name, tunnel in sorted(self._tunnels().items()):
            up.add_metric([name], 1 if tunnel.connected else 0)
            reconnects.add_metric([name], max(tunnel.connects - 1, 0))
            forwards.add_metric([name], len(tunnel.forwards))
        yield up
        yield reconnects
        yield forwards


    def _running_energy(self) -> Metric:
        from .usage import usage_estimate

        family = GaugeMetricFamily(
            "hpcgate_running_sessions_energy_wh",
            "Energy of the running sessions so far in Wh (estimate), by system and partition.",
            labels=["system", "partition"],
        )
        try:
            catalog = self._catalog() if self._catalog is not None else None
        except Exception:
            catalog = None  # a broken catalog file: the hub keeps the last good one
        if catalog is None:
            return family
        now = time.time()
        totals: dict[tuple[str, str], float] = {}
        for spawner in list(self._spawners):
            usage = getattr(spawner, "usage", None)
            if usage is None or usage.ended is not None:
                continue
            try:
                wh = usage_estimate(catalog, usage, now).energy_wh
            except Exception:
                continue
            key = (usage.system, usage.partition)
            totals[key] = totals.get(key, 0.0) + wh
        for (system, partition), wh in sorted(totals.items()):
            family.add_metric([system, partition], round(wh, 6))
        return family


_collector: HubCollector | None = None


def register_hub_collector(spawners: Iterable[Any], tunnels: Any, catalog: Any = None) -> None:
    """Register the scrape-time collector once per process (a later call re-points it)."""
    global _collector
    if _collector is None:
        _collector = HubCollector(spawners, tunnels, catalog)
        REGISTRY.register(_collector)
    else:
        _collector._spawners = spawners
        _collector._tunnels = tunnels
        _collector._catalog = catalog
