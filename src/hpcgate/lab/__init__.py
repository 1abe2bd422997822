"""hpcgate's Jupyter Server extension: a streaming proxy to web apps beside the server,
their lifecycle, and their isolation.

Enabled on install through ``etc/jupyter/jupyter_server_config.d/hpcgate.json``.
Options: ``c.HPCGateLab.*`` (see :class:`hpcgate.lab.extension.HPCGateLab`).
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .extension import HPCGateLab

    return [{"module": "hpcgate.lab", "app": HPCGateLab}]
