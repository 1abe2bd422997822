"""What a session was allocated and for how long: the input of its energy figure.

:class:`SessionUsage` lives in the spawner state (``usage``); it starts when the job's
server reports its address (queue time is not counted) and ends when the session stops
or its job ends. It outlives the stop so that the home page can show the last session's
energy until the next start. :func:`usage_energy` turns it into a
:class:`hpcgate.energy.SessionEnergy` with the catalog's power and carbon figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ..energy import SessionEnergy, session_energy


@dataclass
class SessionUsage:
    """Allocation and wall-clock times (epoch seconds) of one session."""

    system: str
    partition: str
    nodes: int
    cpus: int
    gpus: int
    started: float
    ended: float | None = None
    #: Energy recorded by the scheduler's accounting (Wh), once known.
    measured_wh: float | None = None

    @classmethod
    def begin(cls, request: Any, now: float | None = None) -> SessionUsage:
        """A session of the validated launch ``request`` running from ``now``."""
        return cls(system=request.system, partition=request.partition, nodes=request.nodes,
                   cpus=request.cpus, gpus=request.gpus, started=time.time() if now is None else now)

    def end(self, now: float | None = None) -> None:
        if self.ended is None:
            self.ended = time.time() if now is None else now

    def elapsed(self, now: float | None = None) -> float:
        last = self.ended if self.ended is not None else (time.time() if now is None else now)
        return max(0.0, last - self.started)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: Any) -> SessionUsage | None:
        """The usage stored by :meth:`to_state`; None for anything else."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: data[k] for k in ("system", "partition", "nodes", "cpus", "gpus", "started")},
                       ended=data.get("ended"), measured_wh=data.get("measured_wh"))
        except (KeyError, TypeError):
            return None


def usage_estimate(catalog: Any, usage: SessionUsage, now: float | None = None,
                   intensity: float | None = None, source: str | None = None) -> SessionEnergy:
    """Energy of ``usage`` with ``catalog``'s power figures for its system and partition
    (generic defaults for a system gone from the catalog); CO2 only with ``intensity``."""
    power = catalog.power_for(usage.system, usage.partition) if usage.system in catalog.systems else None
    return session_energy(
        cpus=usage.cpus, gpus=usage.gpus, nodes=usage.nodes, elapsed_s=usage.elapsed(now),
        watts_per_cpu=power.watts_per_cpu if power else 0.0,
        watts_per_gpu=power.watts_per_gpu if power else 0.0,
        pue=power.pue if power else 1.0,
        measured_wh=usage.measured_wh, intensity=intensity, intensity_source=source,
    )


async def usage_energy(gate: Any, usage: SessionUsage, now: float | None = None) -> SessionEnergy:
    """Energy and CO2 of ``usage`` with the power and carbon figures ``gate``'s catalog
    gives for its system and partition (:meth:`HPCGate.carbon_intensity`)."""
    intensity, source = await gate.carbon_intensity(usage.system)
    return usage_estimate(gate.catalog(), usage, now, intensity, source)
