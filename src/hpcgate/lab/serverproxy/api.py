"""The endpoints jupyter-server-proxy's JupyterLab extension calls.

``GET <base>/server-proxy/servers-info``  the apps, as jupyter-server-proxy lists them
``GET <base>/server-proxy/icon/<name>``   an app's launcher icon

So an installed jupyter-server-proxy frontend finds what it asks for. Its launcher
tiles would duplicate hpcgate's own, so the apps are listed with ``enabled: false``
unless ``c.HPCGateLab.serverproxy_launcher`` is true.
"""

from __future__ import annotations

import mimetypes
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

if TYPE_CHECKING:
    from ..context import LabContext


class ServersInfoHandler(JupyterHandler):
    """``{"server_processes": [{name, launcher_entry, new_browser_tab}]}``: no callables, no commands."""

    def initialize(self, lab: LabContext, launcher: bool) -> None:  # type: ignore[override]
        self.lab = lab
        self.launcher = launcher

    @web.authenticated
    def get(self) -> None:
        data = []
        for name, app in sorted(self.lab.manager.apps.items()):
            if app.spec.family and app.spec.family != name:
                continue  # a second instance of an app: one tile per app
            entry = app.spec.launcher()
            item: dict[str, Any] = {
                "name": name,
                "launcher_entry": {
                    "enabled": bool(entry.get("enabled", True)) and self.launcher,
                    "title": str(entry.get("title", name)),
                    "path_info": str(entry.get("path_info", name + "/")),
                    "category": str(entry.get("category", "Notebook")),
                },
                "new_browser_tab": app.spec.new_browser_tab,
            }
            if entry.get("icon_path"):
                item["launcher_entry"]["icon_url"] = url_path_join(self.base_url, "server-proxy", "icon", name)
            data.append(item)
        self.set_header("Content-Type", "application/json")
        self.finish({"server_processes": data})


class IconHandler(JupyterHandler):
    """An app's ``launcher_entry.icon_path`` file, with its guessed content type."""

    def initialize(self, lab: LabContext) -> None:  # type: ignore[override]
        self.lab = lab

    @web.authenticated
    def get(self, name: str) -> None:
        app = self.lab.manager.apps.get(name)
        path = app.spec.launcher().get("icon_path") if app is not None else None
        if not path:
            raise web.HTTPError(404)
        mime_type, encoding = mimetypes.guess_type(str(path))
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            raise web.HTTPError(404) from None
        self.set_header("Content-Type", "application/octet-stream" if encoding or not mime_type else mime_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(body)


def serverproxy_api_handlers(lab: LabContext, launcher: bool) -> list[tuple[str, type, dict[str, Any]]]:
    """Routes (without base_url) of jupyter-server-proxy's endpoints."""
    return [
        (r"server-proxy/servers-info", ServersInfoHandler, {"lab": lab, "launcher": launcher}),
        (r"server-proxy/icon/([^/]+)", IconHandler, {"lab": lab}),
    ]
