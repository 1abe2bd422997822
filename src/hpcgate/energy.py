"""Energy and CO2 of a session: pure functions, no I/O except :func:`read_intensity`.

Method (docs/energy.md):

- **measured**: where Slurm's accounting has an energy plugin
  (``AcctGatherEnergyType``), ``sacct -o ConsumedEnergyRaw`` gives the job's energy in
  joules; :func:`parse_consumed_energy` reads it. An empty field or ``0`` means no plugin
  recorded anything: the estimate is used instead.
- **estimate**: ``energy [Wh] = (cpus * watts_per_cpu + gpus * watts_per_gpu)
  * nodes * elapsed [h]`` with the per-device power the catalog gives for the
  partition (``power``). It counts allocated devices at a constant draw, not what the
  session used: an idle lab is charged like a busy one, memory, network, storage and
  cooling are left out unless the admin folds them into the per-device figures (a PUE
  factor, ``pue``, multiplies the result).
- **CO2**: ``gCO2e = energy [kWh] * intensity [gCO2e/kWh]``; the intensity comes from
  the catalog (``carbon.intensity``) or from a source (``carbon.source``: a file or an
  http(s) URL whose body is one number), read at most every ``carbon.max_age`` seconds.
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How the energy figure was obtained.
MEASURED = "measured"
ESTIMATE = "estimate"

_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*$")


class EnergyError(ValueError):
    """A carbon-intensity source that gave no usable number; the message says why."""


@dataclass(frozen=True)
class SessionEnergy:
    """The energy (Wh) of a session so far, how it was obtained, and its CO2 (g)."""

    energy_wh: float
    method: str  # MEASURED or ESTIMATE
    elapsed_s: float
    co2_g: float | None = None
    intensity: float | None = None
    #: Where the intensity came from: "catalog", a file path or a URL.
    intensity_source: str | None = None

    @property
    def label(self) -> str:
        """One line for a card: ``42.5 Wh (estimate), 2.13 g CO2e``; kWh from 1 kWh
        and kg from 1 kg on, three significant digits."""
        wh = self.energy_wh
        text = (f"{wh / 1000:.3g} kWh" if wh >= 1000 else f"{wh:.3g} Wh") + f" ({self.method})"
        if self.co2_g is not None:
            text += f", {self.co2_g / 1000:.3g} kg CO2e" if self.co2_g >= 1000 else f", {self.co2_g:.3g} g CO2e"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "energy_wh": round(self.energy_wh, 3),
            "method": self.method,
            "estimate": self.method == ESTIMATE,
            "elapsed_s": round(self.elapsed_s, 1),
            "co2_g": None if self.co2_g is None else round(self.co2_g, 3),
            "intensity_g_per_kwh": self.intensity,
            "intensity_source": self.intensity_source,
            "label": self.label,
        }


def estimate_wh(
    *, cpus: int, gpus: int, nodes: int, elapsed_s: float, watts_per_cpu: float, watts_per_gpu: float, pue: float = 1.0
) -> float:
    """Energy in Wh of ``nodes`` x (``cpus`` cores + ``gpus`` GPUs) drawing the given
    watts each for ``elapsed_s`` seconds, times the facility's ``pue``. Negative
    inputs raise ValueError."""
    for name, value in (("cpus", cpus), ("gpus", gpus), ("nodes", nodes), ("elapsed_s", elapsed_s),
                        ("watts_per_cpu", watts_per_cpu), ("watts_per_gpu", watts_per_gpu)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if pue < 1 or not math.isfinite(pue):
        raise ValueError(f"pue must be a finite number >= 1, got {pue!r}")
    watts = (cpus * watts_per_cpu + gpus * watts_per_gpu) * nodes
    return watts * elapsed_s / 3600.0 * pue


def parse_consumed_energy(text: str) -> float | None:
    """``sacct -n -P -X -o ConsumedEnergyRaw`` output -> Wh, or None when no energy
    plugin recorded anything (empty, ``0``, or not a number). The raw field is joules."""
    first = (text or "").strip().splitlines()[:1]
    if not first:
        return None
    match = _NUMBER.match(first[0])
    if not match:
        return None
    joules = float(match.group(1))
    return joules / 3600.0 if joules > 0 else None


def co2_grams(energy_wh: float, intensity: float) -> float:
    """gCO2e of ``energy_wh`` at ``intensity`` gCO2e/kWh."""
    return energy_wh / 1000.0 * intensity


def parse_intensity(text: str, source: str) -> float:
    """A source's body -> gCO2e/kWh; EnergyError naming ``source`` unless it is one
    number from 0 to 5000."""
    match = _NUMBER.match(text[:100])
    if not match:
        raise EnergyError(f"The carbon intensity source {source} must return one number (gCO2e/kWh), got {text[:40]!r}.")
    value = float(match.group(1))
    if value > 5000:
        raise EnergyError(f"The carbon intensity source {source} returned {value} gCO2e/kWh, above 5000: refused.")
    return value


def read_intensity(source: str, timeout: float = 5.0) -> float:
    """Read one number from ``source``: an ``http(s)://`` URL (GET, ``timeout``
    seconds) or a file path. EnergyError with the reason if it cannot."""
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout) as resp:
                body = resp.read(200).decode("utf-8", "replace")
        else:
            body = Path(source).read_text(encoding="utf-8")[:200]
    except (OSError, ValueError) as exc:
        raise EnergyError(f"Cannot read the carbon intensity from {source}: {exc}") from None
    return parse_intensity(body, source)


class IntensityCache:
    """The carbon intensity of a configured source, re-read at most every ``max_age``
    seconds; on a failed read the last good value stays (and ``last_error`` says why);
    None until one read succeeded. Thread-safe: callers on an event loop run
    :meth:`get` in a thread (a URL read blocks up to ``timeout`` seconds)."""

    def __init__(self, source: str, max_age: float = 900.0, timeout: float = 5.0):
        self.source = source
        self.max_age = max_age
        self.timeout = timeout
        self._lock = threading.Lock()
        self.last_error = ""
        self._value: float | None = None
        self._read_at = -math.inf

    def get(self) -> float | None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.max_age:
                self._read_at = now
                try:
                    self._value = read_intensity(self.source, self.timeout)
                    self.last_error = ""
                except EnergyError as exc:
                    self.last_error = str(exc)
            return self._value


def session_energy(
    *,
    cpus: int,
    gpus: int,
    nodes: int,
    elapsed_s: float,
    watts_per_cpu: float,
    watts_per_gpu: float,
    pue: float = 1.0,
    measured_wh: float | None = None,
    intensity: float | None = None,
    intensity_source: str | None = None,
) -> SessionEnergy:
    """The measured energy where there is one, else the estimate; with CO2 when an
    intensity is known."""
    if measured_wh is not None:
        wh, method = measured_wh, MEASURED
    else:
        wh = estimate_wh(cpus=cpus, gpus=gpus, nodes=nodes, elapsed_s=elapsed_s,
                         watts_per_cpu=watts_per_cpu, watts_per_gpu=watts_per_gpu, pue=pue)
        method = ESTIMATE
    co2 = None if intensity is None else co2_grams(wh, intensity)
    return SessionEnergy(energy_wh=wh, method=method, elapsed_s=elapsed_s, co2_g=co2,
                         intensity=intensity, intensity_source=intensity_source if intensity is not None else None)
