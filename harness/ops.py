"""What the operations tests share: a catalog of this machine, a hub on it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from harness.hub import Hub

#: an app beside the lab: a static file server of the working directory
LISTING_APP = {
    "command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
    "ready_check": {"path": "/", "status": 200},
}


def local_catalog(partitions: dict[str, Any], systems: dict[str, Any] | None = None, **top: Any) -> str:
    """A catalog (YAML) of a ``local`` system with ``partitions``, more ``systems``, the
    app ``listing``, every system granted to every user, and more top-level keys."""
    all_systems = {
        "local": {"kind": "local", "workdir": "{state_dir}/users/{account}", "status_interval": 1,
                  "partitions": partitions},
        **(systems or {}),
    }
    catalog = {
        "systems": all_systems,
        "groups": {"everyone": {"all_users": True, "grants": [{"system": name} for name in all_systems]}},
        "defaults": {"system": "local"},
        "apps": {"listing": LISTING_APP},
        **top,
    }
    return yaml.safe_dump(catalog, sort_keys=False)


def run_hub(directory: Path, catalog: Path, extra: str = "") -> Iterator[Hub]:
    """A module fixture's body: the hub up, then every server stopped and the hub too."""
    hub = Hub(directory, catalog=str(catalog), extra=extra).start()
    try:
        yield hub
    finally:
        hub.stop_every_server()
        hub.stop()
