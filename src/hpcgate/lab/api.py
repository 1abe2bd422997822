"""REST API for the apps: list, start, stop, restart, log.

``GET    <base>/hpcgate/api/apps``               every app with its state
``GET    <base>/hpcgate/api/apps/<name>``        one app
``POST   <base>/hpcgate/api/apps/<name>``        start (returns when ready)
``DELETE <base>/hpcgate/api/apps/<name>``        stop
``POST   <base>/hpcgate/api/apps/<name>/restart`` restart
``GET    <base>/hpcgate/api/apps/<name>/log``    last output, text/plain

All routes need the server's authentication; they do not count as user activity.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from .apps.manager import AppStartError, ManagedApp

if TYPE_CHECKING:
    from .extension import LabContext


class _AppsHandler(APIHandler):
    _track_activity = False  # watching the app list is not user activity

    def initialize(self, lab: LabContext) -> None:  # type: ignore[override]
        self.lab = lab

    def _app(self, name: str) -> ManagedApp:
        app = self.lab.manager.get(name)
        if app is None:
            raise web.HTTPError(404, "no app with that name")
        return app

    async def _lifecycle(self, app: ManagedApp, action: str) -> None:
        """Start or restart; answers with the app's info, 503 with the reason on failure."""
        if not app.spec.managed:
            raise web.HTTPError(400, "this app is started outside hpcgate; it has no command")
        try:
            await (app.start() if action == "start" else app.restart())
        except AppStartError as exc:
            self.set_status(503)
            self.finish(json.dumps({"message": str(exc), **app.info()}))
            return
        self.finish(json.dumps(app.info()))


class AppListHandler(_AppsHandler):
    @web.authenticated
    async def get(self) -> None:
        apps = [await self.lab.app_info(a) for a in self.lab.manager.apps.values()]
        self.finish(json.dumps({"apps": apps}))


class AppHandler(_AppsHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        self.finish(json.dumps(await self.lab.app_info(self._app(name))))

    @web.authenticated
    async def post(self, name: str) -> None:
        await self._lifecycle(self._app(name), "start")

    @web.authenticated
    async def delete(self, name: str) -> None:
        app = self._app(name)
        await app.stop()
        self.finish(json.dumps(app.info()))


class AppRestartHandler(_AppsHandler):
    @web.authenticated
    async def post(self, name: str) -> None:
        await self._lifecycle(self._app(name), "restart")


class AppLogHandler(_AppsHandler):
    @web.authenticated
    def get(self, name: str) -> None:
        self.finish(self._app(name).log.text(), set_content_type="text/plain; charset=utf-8")


def api_handlers(lab: LabContext) -> list[tuple[str, type, dict[str, Any]]]:
    name = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
    kw = {"lab": lab}
    return [
        (r"hpcgate/api/apps", AppListHandler, kw),
        (rf"hpcgate/api/apps/{name}", AppHandler, kw),
        (rf"hpcgate/api/apps/{name}/restart", AppRestartHandler, kw),
        (rf"hpcgate/api/apps/{name}/log", AppLogHandler, kw),
    ]
