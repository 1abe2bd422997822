"""TensorBoard on a log directory the user picks when starting it."""

from __future__ import annotations

from typing import Any

from . import icon


def tensorboard() -> dict[str, Any]:
    """TensorBoard, which can only listen on TCP: in its own network namespace behind
    a unix socket where bubblewrap works, so other users of the node cannot reach it;
    on 127.0.0.1 elsewhere (the lab's owner check keeps other users' processes from
    posing as it). Up to three run at once, one per log directory."""
    return {
        "command": [
            "tensorboard", "--logdir", "{logdir}", "--host", "127.0.0.1", "--port", "{port}",
            "--path_prefix", "{base_url}{app_name}", "--reload_interval", "5",
        ],
        "absolute_url": True,
        "timeout": 180.0,
        "ready_check": {"path": "/", "status": 200},
        "isolate_network": "auto",
        "new_browser_tab": False,
        "instances": 3,
        "parameters": {"logdir": {"title": "Log directory", "kind": "directory", "default": "."}},
        "requires": [{"program": "tensorboard", "install": "pip install tensorboard (into the environment the lab runs in, or load its module in c.HPCGateLab.app_setup)"}],
        "launcher_entry": {"title": "TensorBoard", "icon_path": icon("scalars"), "category": "Machine learning"},
    }
