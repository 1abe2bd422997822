"""The running labs' metrics endpoints for Prometheus's file-based service discovery.

With ``HPCGate.prometheus_sd_file`` set, the hub keeps that file (JSON, the format of
Prometheus's ``file_sd_configs``) listing one target group per ready server: the
address Prometheus reaches the labs through (``HPCGate.prometheus_sd_address``, the
proxy in front of the hub) and, as labels, the lab's metrics path
(``__metrics_path__``: ``<server URL>hpcgate/metrics``) and ``user``, ``server``,
``system`` and ``partition``. Prometheus re-reads the file when it changes; the hub
rewrites it (atomically, only when its content changes) every
``HPCGate.prometheus_sd_interval`` seconds, so a lab appears and disappears within that
time. The file holds no secret (mode 0644): the scrape job's token (``access:servers``
on the users, ``read:metrics`` for the hub) stays in Prometheus's own credentials file.
Example scrape job: ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from ..files import write_atomic

log = logging.getLogger("hpcgate.file_sd")

#: where a lab serves its metrics, below its server URL (hpcgate.lab.metrics)
LAB_METRICS_PATH = "hpcgate/metrics"


def lab_target_groups(spawners: Iterable[Any], address: str) -> list[dict[str, Any]]:
    """One file_sd target group per ready hpcgate server of ``spawners``, sorted."""
    groups = []
    for spawner in list(spawners):
        try:
            if not spawner.ready or not spawner.system or spawner.job is None or spawner.server is None:
                continue
            base = spawner.server.base_url
            labels = {
                "__metrics_path__": base.rstrip("/") + "/" + LAB_METRICS_PATH,
                "user": spawner.user.name,
                "server": spawner.name or "",
                "system": spawner.system,
                "partition": spawner.partition or "",
            }
        except AttributeError:
            continue  # a spawner torn down while we looked
        groups.append({"targets": [address], "labels": labels})
    return sorted(groups, key=lambda g: g["labels"]["__metrics_path__"])


def render(groups: list[dict[str, Any]]) -> str:
    return json.dumps(groups, indent=1, sort_keys=True) + "\n"


class FileSDWriter:
    """Rewrites ``path`` from ``spawners`` every ``interval`` seconds (see the module doc)."""

    def __init__(self, path: str, address: str, interval: float, spawners: Iterable[Any]):
        self.path = path
        self.address = address
        self.interval = interval
        self._spawners = spawners
        self._written: str | None = None
        #: times the file was (re)written (tests, benchmarks)
        self.writes = 0

    def write_now(self) -> bool:
        """Write the file if its content changed; True if written. An unwritable path
        is logged, never raised (discovery must not break the hub)."""
        text = render(lab_target_groups(self._spawners, self.address))
        if text == self._written:
            return False
        try:
            write_atomic(self.path, text, mode=0o644)
        except OSError as exc:
            log.warning("Cannot write Prometheus targets to %s: %s", self.path, exc)
            return False
        self._written = text
        self.writes += 1
        return True

    async def run(self) -> None:
        """Until cancelled (hub shutdown)."""
        while True:
            self.write_now()
            await asyncio.sleep(self.interval)
