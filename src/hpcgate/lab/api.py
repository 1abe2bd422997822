"""REST API for the apps: list, start, stop, restart, log.

``GET    <base>/hpcgate/api/apps``               every app with its state
``GET    <base>/hpcgate/api/apps/<name>``        one app
``POST   <base>/hpcgate/api/apps/<name>``        start (returns when ready)
``DELETE <base>/hpcgate/api/apps/<name>``        stop
``POST   <base>/hpcgate/api/apps/<name>/restart`` restart
``POST   <base>/hpcgate/api/apps/<name>/new``    start the first free instance
``GET    <base>/hpcgate/api/apps/<name>/log``    last output, text/plain
``GET    <base>/hpcgate/api/apps/<name>/icon``   the launcher icon (SVG or PNG)
``GET    <base>/hpcgate/api/announcements``     the hub's announcements (asked of the
                                               hub with the server's own token)

Start, restart and new take an optional JSON body ``{"parameters": {...}}`` with
values for the app's ``parameters`` (e.g. TensorBoard's log directory). Apps whose
programs are missing are listed with ``available: false`` and ``missing`` (program
and what to install); starting them answers 503 with that text. Every request is
validated whole before anything happens: a bad body or parameter (a directory outside
the server's work area, one that does not exist) answers 400 and creates, starts or
stops nothing; an app that cannot start answers 503 with the reason.

All routes need the server's authentication; they do not count as user activity.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from .apps.manager import AppRequestError, AppStartError, ManagedApp

if TYPE_CHECKING:
    from .context import LabContext


class _AppsHandler(APIHandler):
    _track_activity = False  # watching the app list is not user activity

    def initialize(self, lab: LabContext) -> None:  # type: ignore[override]
        self.lab = lab

    def _app(self, name: str) -> ManagedApp:
        app = self.lab.manager.get(name)
        if app is None:
            raise web.HTTPError(404, "no app with that name")
        return app

    def _parameters(self) -> dict[str, Any] | None:
        if not self.request.body:
            return None
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'the body must be a JSON object: {"parameters": {...}}')
        unknown = sorted(set(body) - {"parameters"})
        if unknown:
            raise web.HTTPError(400, f"unknown key {unknown[0][:40]!r} in the body; only parameters is taken")
        params = body.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise web.HTTPError(400, "parameters must be an object")
        return params

    async def _lifecycle(self, app: ManagedApp, action: str) -> None:
        """Start, restart or start a new instance; answers with the app's info, 503
        with the reason on failure."""
        if not app.spec.managed:
            raise web.HTTPError(400, "this app is started outside hpcgate; it has no command")
        params = self._parameters()
        try:
            if action == "new":
                app = await self.lab.manager.start_new(app.spec.family or app.spec.name, params)
            elif action == "start":
                await app.start(params)
            else:
                await app.restart(params)
        except AppRequestError as exc:
            # refused before anything was touched: no file, no process, no state change
            self.set_status(exc.status)
            self.finish(json.dumps({"message": str(exc), **app.info()}))
            return
        except AppStartError as exc:
            self.set_status(503)
            self.finish(json.dumps({"message": str(exc), **app.info()}))
            return
        self.finish(json.dumps(app.info()))


class AppListHandler(_AppsHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.lab.manager.check_all_available()
        apps = [await self.lab.app_info(a) for a in self.lab.manager.apps.values()]
        self.finish(json.dumps({"apps": apps}))


class AppHandler(_AppsHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        app = self._app(name)
        await app.check_available()
        self.finish(json.dumps(await self.lab.app_info(app)))

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


class AppNewHandler(_AppsHandler):
    @web.authenticated
    async def post(self, name: str) -> None:
        await self._lifecycle(self._app(name), "new")


class AppLogHandler(_AppsHandler):
    @web.authenticated
    def get(self, name: str) -> None:
        self.finish(self._app(name).log.text(), set_content_type="text/plain; charset=utf-8")


ICON_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}


class AppIconHandler(_AppsHandler):
    @web.authenticated
    def get(self, name: str) -> None:
        path = str(self._app(name).spec.launcher().get("icon_path") or "")
        ctype = ICON_TYPES.get(os.path.splitext(path)[1].lower())
        if not ctype or not os.path.isfile(path):
            raise web.HTTPError(404, "this app has no icon")
        with open(path, "rb") as f:
            body = f.read()
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(body, set_content_type=ctype)


class AnnouncementsHandler(APIHandler):
    """The hub's current announcements (``GET $JUPYTERHUB_API_URL/hpcgate/announcements``).

    Answers ``{"announcements": []}`` when the lab runs without a hub or the hub does
    not answer: an announcement is never worth an error in the lab.
    """

    _track_activity = False  # the extension asks at start-up: not user activity

    @web.authenticated
    async def get(self) -> None:
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        api, token = os.environ.get("JUPYTERHUB_API_URL"), os.environ.get("JUPYTERHUB_API_TOKEN")
        found: list[Any] = []
        if api and token:
            try:
                resp = await AsyncHTTPClient().fetch(
                    api.rstrip("/") + "/hpcgate/announcements",
                    headers={"Authorization": f"token {token}"},
                    request_timeout=10,
                )
                found = json.loads(resp.body).get("announcements", [])
            except (HTTPClientError, OSError, ValueError, AttributeError) as exc:
                self.log.warning("hpcgate.lab: no announcements from the hub: %s", exc)
        messages = [
            {"message": str(a.get("message", ""))[:500], "until": a.get("until")}
            for a in found
            if isinstance(a, dict) and a.get("message")
        ]
        self.finish(json.dumps({"announcements": messages}))


def api_handlers(lab: LabContext) -> list[tuple[str, type, dict[str, Any]]]:
    name = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
    kw = {"lab": lab}
    return [
        (r"hpcgate/api/apps", AppListHandler, kw),
        (rf"hpcgate/api/apps/{name}", AppHandler, kw),
        (rf"hpcgate/api/apps/{name}/restart", AppRestartHandler, kw),
        (rf"hpcgate/api/apps/{name}/new", AppNewHandler, kw),
        (rf"hpcgate/api/apps/{name}/log", AppLogHandler, kw),
        (rf"hpcgate/api/apps/{name}/icon", AppIconHandler, kw),
        (r"hpcgate/api/announcements", AnnouncementsHandler),
    ]
