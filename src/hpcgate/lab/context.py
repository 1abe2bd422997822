"""What the lab's handlers share: options, the app manager and the connection pool."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jupyter_server._tz import utcnow

from .apps.manager import AppManager, AppState, ManagedApp
from .authcache import AuthCache, provider_cache_age
from .metrics import LabMetrics
from .security import HostAllowlist, strip_token_query
from .upstream import ConnectionPool, ForeignSocketError

if TYPE_CHECKING:
    from .extension import HPCGateLab


class LabContext:
    """What the handlers share: options, the app manager and the connection pool."""

    def __init__(
        self,
        ext: HPCGateLab,
        manager: AppManager,
        settings: dict[str, Any],
        host_allowlist: list[str] | Callable[..., bool] | None = None,
        non_service_rewrite_response: list[Callable[..., Any]] | None = None,
    ):
        """``host_allowlist`` (``c.ServerProxy``'s) replaces the extension's when given;
        ``non_service_rewrite_response`` rewrites responses of ``proxy/...`` routes."""
        self.settings = settings
        self.base_url: str = settings.get("base_url", "/")
        self.manager = manager
        self.pool = ConnectionPool(check_owner=ext.check_socket_owner, max_idle=ext.pool_max_idle)
        self.allowlist = HostAllowlist(ext.host_allowlist if host_allowlist is None else host_allowlist)
        self.non_service_rewrite_response = list(non_service_rewrite_response or [])
        self.forward_token_query = ext.forward_token_query
        patterns = list(ext.scrub_cookie_patterns)
        if settings.get("cookie_name"):
            patterns.append(re.escape(settings["cookie_name"]))
        self.cookie_patterns = [re.compile(p) for p in patterns]
        self.check_owner = ext.check_socket_owner
        self.chunk_size = ext.chunk_size
        self.splice_min_size = ext.splice_min_size or (1 << 62)
        self.max_body_size = ext.max_request_body_size
        self.websocket_max_message_size = ext.websocket_max_message_size
        self.rewrite_body_limit = ext.rewrite_body_limit
        self.allowed_ports = self._parse_ports(ext.allowed_ports)
        ttl = ext.auth_cache_ttl
        age = provider_cache_age(settings.get("identity_provider"))
        if age is not None:
            ttl = min(ttl, age)
        #: identities the Jupyter server accepted a moment ago (:mod:`.authcache`)
        self.auth_cache = AuthCache(ttl, ext.auth_cache_size)
        #: when (monotonic) the proxy last counted activity, per app name (None: proxy/<port>)
        self.activity_marks: dict[str | None, float] = {}
        #: small GETs the auth cache knows answered without a tornado handler (proxy.lean)
        self.lean_answers = bool(ext.lean_answers)
        #: Host values the Jupyter server's check_host accepted (proxy.base.ProxyBase._host_allowed)
        self.allowed_hosts: set[str] = set()
        #: the lab's Prometheus metrics (<base>/hpcgate/metrics)
        self.metrics = LabMetrics(lambda: [a.spec.name for a in manager.apps.values() if a.state == AppState.RUNNING])
        manager.metrics = self.metrics

    @staticmethod
    def _parse_ports(entries: list[Any]) -> list[tuple[int, int]]:
        ranges = []
        for entry in entries:
            if isinstance(entry, int):
                ranges.append((entry, entry))
            else:
                lo, _, hi = str(entry).partition("-")
                ranges.append((int(lo), int(hi or lo)))
        return ranges

    def app_query(self, raw_query: str) -> str:
        """The query string sent to an app: without ``token`` unless ``forward_token_query``."""
        return raw_query if self.forward_token_query else strip_token_query(raw_query)

    def port_allowed(self, port: int, host: str) -> bool:
        return not self.allowed_ports or any(lo <= port <= hi for lo, hi in self.allowed_ports)

    def record_activity(self) -> None:
        """Proxied traffic is activity of the server (JupyterHub's idle culler reads it)."""
        self.settings["api_last_activity"] = utcnow()

    async def app_info(self, app: ManagedApp) -> dict[str, Any]:
        info = app.info()
        if not app.spec.managed:
            # Started elsewhere: report whether it answers.
            try:
                up = await asyncio.wait_for(app.probe(), 2)
            except (ForeignSocketError, TimeoutError):
                up = False
            info["state"] = (AppState.RUNNING if up else AppState.STOPPED).value
        return info
