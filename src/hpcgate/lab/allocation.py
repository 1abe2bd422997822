"""The job's allocation, for the lab's resource display (jupyter-resource-usage).

jupyter-resource-usage compares the lab's memory and CPU use with ``MEM_LIMIT`` (bytes)
and ``CPU_LIMIT`` (CPUs) from the environment; without them it shows the node's. The
hub's HPCSpawner sets both from the validated launch; inside a Slurm job the
scheduler's own figures (``SLURM_CPUS_ON_NODE``, ``SLURM_MEM_PER_NODE`` or
``SLURM_MEM_PER_CPU``, in MiB) win, since they are what the job really got on this node.
hpcgate-singleuser applies :func:`allocation_env` before the Jupyter server starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MiB = 1024 * 1024
_COUNT = re.compile(r"^[0-9]{1,9}$")


def _count(environ: Mapping[str, str], key: str) -> int | None:
    value = environ.get(key, "").strip()
    return int(value) if _COUNT.match(value) and int(value) > 0 else None


def allocation_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``MEM_LIMIT``/``CPU_LIMIT`` to set from Slurm's variables (empty outside a job
    or where Slurm gives no figure: the hub's values then stay)."""
    update = {}
    cpus = _count(environ, "SLURM_CPUS_ON_NODE")
    if cpus:
        update["CPU_LIMIT"] = str(cpus)
    per_node = _count(environ, "SLURM_MEM_PER_NODE")
    per_cpu = _count(environ, "SLURM_MEM_PER_CPU")
    if per_node:
        update["MEM_LIMIT"] = str(per_node * MiB)
    elif per_cpu and cpus:
        update["MEM_LIMIT"] = str(per_cpu * cpus * MiB)
    return update
