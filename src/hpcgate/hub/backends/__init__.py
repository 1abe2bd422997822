"""Backends, one module per kind of system. :func:`backend_class` maps a kind to its class."""

from __future__ import annotations

import importlib

from .base import Backend

#: kind -> "module:Class"; modules are imported on first use.
KINDS = {
    "local": "hpcgate.hub.backends.local:LocalBackend",
    "ssh": "hpcgate.hub.backends.ssh:SSHBackend",
    "slurm": "hpcgate.hub.backends.slurm.backend:SlurmBackend",
}


def backend_class(kind: str) -> type[Backend]:
    try:
        target = KINDS[kind]
    except KeyError:
        raise ValueError(f"no backend for system kind '{kind}'; known: {', '.join(KINDS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
