"""MLflow tracking server with its store in the user's own directory."""

from __future__ import annotations

from typing import Any

from . import icon


def mlflow() -> dict[str, Any]:
    """``mlflow server`` on 127.0.0.1 (in its own network namespace behind a unix
    socket where bubblewrap works, as TensorBoard) with a SQLite store and artifacts under the chosen
    directory (default ``mlruns`` in the lab's root directory, created if missing).

    MLflow 3.5+ refuses requests whose Host header is not local (DNS-rebinding
    protection); only hpcgate's authenticated proxy reaches it, so the proxy presents
    the local address as Host."""
    return {
        "command": [
            "mlflow", "server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
            "--backend-store-uri", "sqlite:///{store}/mlflow.db", "--default-artifact-root", "{store}/artifacts",
            "--static-prefix", "{base_url}{app_name}",
        ],
        "absolute_url": True,
        "request_headers_override": {"Host": "127.0.0.1:{port}"},
        "timeout": 240.0,
        "ready_check": {"path": "/health", "status": 200},
        "isolate_network": "auto",
        "new_browser_tab": True,
        "parameters": {"store": {"title": "Tracking directory", "kind": "directory", "default": "mlruns", "create": True}},
        "requires": [{"program": "mlflow", "install": "pip install mlflow (into the environment the lab runs in, or load its module in c.HPCGateLab.app_setup)"}],
        "launcher_entry": {"title": "MLflow", "icon_path": icon("tracking"), "category": "Machine learning"},
    }
