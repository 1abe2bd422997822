"""The ``HPCGateLab`` server extension: options, wiring, shutdown.

Every option is ``c.HPCGateLab.<name>`` in a Jupyter server config file. App specs also
come from ``c.ServerProxy.servers`` and the ``jupyter_serverproxy_servers`` entry points,
so jupyter-server-proxy plugins work without its server extension.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Callable, Dict, Float, Int, List, Unicode, Union, default

from .. import protocol
from ..appspec import SpecError, collect_specs
from .api import api_handlers
from .apps.manager import AppManager
from .apps.recipes.generic import command_app, load_apps_file
from .context import LabContext
from .kernels import kernels_from_env, write_kernelspecs
from .metrics import metrics_handlers
from .proxy import PORT_ROUTES, proxy_handlers
from .proxy.lean import LeanRouter
from .security import DEFAULT_COOKIE_PATTERNS, private_socket_dir
from .serverproxy.api import serverproxy_api_handlers
from .serverproxy.config import ServerProxy
from .session import session_handlers

MiB = 1024 * 1024


def tune_malloc(mmap_threshold: int) -> bool:
    """Keep allocations below ``mmap_threshold`` on glibc's heap; False where unsupported.

    glibc serves anything over 128 KiB with its own ``mmap`` and unmaps it on free, so
    each such buffer is page-faulted in again. It raises that threshold by itself only
    after the first large block is freed; this sets it (and the trim threshold, as glibc
    would: twice as high) up front.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (probes the attribute) glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, 2 * mmap_threshold))


class HPCGateLab(ExtensionApp):
    """Streaming proxy, app lifecycle and isolation inside a Jupyter server."""

    name = "hpcgate_lab"
    load_other_extensions = True

    host_allowlist = Union(
        [List(Unicode()), Callable()],
        default_value=["localhost", "127.0.0.1", "::1"],
        help="""Hosts that ``<base>/proxy/<host>:<port>/`` may reach.

        A list of host names (exact match, case-insensitive), IP addresses and CIDR
        networks (``10.0.0.0/8``); IPv4-mapped IPv6 addresses count as IPv4. Or a
        callable ``(handler, host) -> bool``. ``<base>/proxy/<port>/`` always means
        localhost. Hosts in numeric shorthand (``2130706433``), with ``@``,
        percent-encoding or IPv6 zones are refused before this list is consulted.""",
    ).tag(config=True)

    allowed_ports = List(
        Union([Int(), Unicode()]),
        default_value=[],
        help="""Ports ``<base>/proxy/...`` may reach, as numbers or ``"8000-8999"`` ranges.
        Empty (the default) allows every port. Named apps are not affected.""",
    ).tag(config=True)

    check_socket_owner = Bool(
        True,
        help="""Refuse to proxy to a local socket that belongs to another Unix user.

        The owner of a TCP socket is read from /proc/net/tcp and /proc/net/tcp6 for the
        accepted connection; for unix sockets it is the peer credential. On shared login
        nodes this stops one user's browser session (and cookies) from reaching another
        user's process that happens to listen on the requested port.""",
    ).tag(config=True)

    scrub_cookie_patterns = List(
        Unicode(),
        default_value=list(DEFAULT_COOKIE_PATTERNS),
        help="""Regular expressions (full match) of cookie names removed from every request
        before it reaches an app. The defaults cover JupyterHub's and Jupyter server's
        login and XSRF cookies; the server's own ``cookie_name`` is always added.""",
    ).tag(config=True)

    auth_cache_ttl = Float(
        5.0,
        help="""Seconds the proxy remembers the identity the Jupyter server's own
        authentication accepted for a request's exact credentials (a keyed hash of its
        ``Host``, ``Authorization`` and ``Cookie`` headers), for ``GET`` and ``HEAD``
        requests to apps: the hundreds of small files of an app's page are then not each
        authenticated from scratch. Refused credentials are never remembered; requests
        with a ``token`` query parameter, other methods and websocket upgrades always take
        the full path. Capped at HubAuth's ``cache_max_age`` (JupyterHub's own cache of
        the hub's answers), so a revoked or expired token is refused no later than
        HubAuth alone would refuse it. 0 turns it off (see :mod:`hpcgate.lab.authcache`).""",
    ).tag(config=True)

    auth_cache_size = Int(
        1024,
        help="""Most identities ``auth_cache_ttl`` keeps (least recently used dropped first).""",
    ).tag(config=True)

    lean_answers = Bool(
        True,
        help="""Answer small ``GET`` and ``HEAD`` requests to apps whose credentials the
        ``auth_cache`` remembers without a tornado request handler per request: the same
        answers (status, headers, body), activity and metrics as the proxy's handler
        gives, with less work per request; anything else (errors, redirects, large or
        streamed bodies, token-authenticated requests, apps with rewriters or static
        files) still goes through the handler (see :mod:`hpcgate.lab.proxy.lean`).
        False sends every request through the handler.""",
    ).tag(config=True)

    websocket_max_message_size = Int(
        256 * MiB,
        help="""Largest websocket message in bytes, in either direction. Larger messages
        close the connection with code 1009.""",
    ).tag(config=True)

    chunk_size = Int(
        512 * 1024,
        help="""Largest piece of a response body read from an app before it is written to
        the browser. At most about two pieces per download are held in memory.""",
    ).tag(config=True)

    malloc_mmap_threshold = Int(
        4 * MiB,
        help="""On glibc, buffers smaller than this come from the heap rather than from a
        fresh ``mmap`` each (set with ``mallopt``; free heap above twice this is returned
        to the system). Without it every 1 MiB websocket message costs page faults on
        each of its copies. 0 leaves the allocator alone.""",
    ).tag(config=True)

    splice_min_size = Int(
        1 * MiB,
        help="""Fixed-length response bodies at least this large are relayed by a worker
        thread with plain read/write through one 1 MiB buffer, off the event loop
        (faster on loopback than ``splice(2)``, which the name recalls). 0 disables it.""",
    ).tag(config=True)

    max_request_body_size = Int(
        1 << 50,
        help="""Largest request body (upload) in bytes passed to an app. Uploads stream,
        so this is a policy limit, not a memory limit.""",
    ).tag(config=True)

    rewrite_body_limit = Int(
        64 * MiB,
        help="""Largest response body in bytes an app with ``rewrite_response`` may send:
        those responses are read whole so the callables can change them.""",
    ).tag(config=True)

    pool_max_idle = Int(
        16,
        help="Idle keep-alive connections kept per app address for reuse.",
    ).tag(config=True)

    apps = Dict(
        help="""App specs by name, served at ``<base>/<name>/``. Same keys as
        ``c.ServerProxy.servers`` plus hpcgate's ``ready_check``, ``restart``,
        ``max_restarts``, ``idle_timeout``, ``stop_timeout`` and ``isolate_network``
        (see ``hpcgate.appspec``). Overrides specs of the same name from any
        other source.""",
    ).tag(config=True)

    apps_file = Unicode(
        "",
        help="""A YAML file mapping app names to specs, in the short form of
        ``hpcgate.lab.apps.recipes.generic`` (``command`` as one string, ``title``,
        ``icon``, ``install``...) or the full one. Read at start; ``c.HPCGateLab.apps``
        overrides it by name. Default: ``$HPCGATE_APPS_FILE`` if set.""",
    ).tag(config=True)

    @default("apps_file")
    def _default_apps_file(self) -> str:
        return os.environ.get("HPCGATE_APPS_FILE", "")

    catalog_apps = Dict(
        help="""App specs from the hub's catalog, in the short form of
        ``hpcgate.lab.apps.recipes.generic``: the apps the admin offers on this system.
        Default: the JSON object in ``$HPCGATE_APPS``, which the hub's HPCSpawner sets
        from the catalog. ``c.HPCGateLab.apps_file`` and ``c.HPCGateLab.apps`` override
        them by name.""",
    ).tag(config=True)

    @default("catalog_apps")
    def _default_catalog_apps(self) -> dict[str, Any]:
        text = os.environ.get("HPCGATE_APPS", "")
        if not text:
            return {}
        try:
            apps = json.loads(text)
        except ValueError as exc:
            self.log.error("hpcgate.lab: $HPCGATE_APPS is not JSON, the catalog's apps are left out: %s", exc)
            return {}
        if not isinstance(apps, dict):
            self.log.error("hpcgate.lab: $HPCGATE_APPS must be a JSON object; the catalog's apps are left out")
            return {}
        return apps

    catalog_kernels = Dict(
        help="""Kernels from environment modules that the hub's catalog offers on this
        system: name -> ``{display_name, modules, argv, language}``. Default: the JSON
        object in ``$HPCGATE_KERNELS``, which the hub's HPCSpawner sets. Written as
        kernelspecs into this server's private directory, first on the kernel search
        path (:mod:`hpcgate.lab.kernels`).""",
    ).tag(config=True)

    @default("catalog_kernels")
    def _default_catalog_kernels(self) -> dict[str, Any]:
        try:
            return kernels_from_env(os.environ.get(protocol.KERNELS, ""))
        except ValueError as exc:
            self.log.error("hpcgate.lab: the catalog's kernels are left out: %s", exc)
            return {}

    resource_display_cpu = Bool(
        True,
        help="""Have jupyter-resource-usage show the lab's CPU use as well as its memory
        (``c.ResourceUseDisplay.track_cpu_percent``, unless that is configured), both
        against the job's allocation (``MEM_LIMIT``/``CPU_LIMIT``, see
        :mod:`hpcgate.lab.allocation`).""",
    ).tag(config=True)

    load_entry_points = Bool(
        True,
        help="Load app specs from the ``hpcgate_apps`` entry point group.",
    ).tag(config=True)

    forward_token_query = Bool(
        False,
        help="""Pass a ``token`` query parameter on to apps. Off (the default), the
        Jupyter server's token is removed from every proxied query string, so no app
        ever learns it. On only to compare with jupyter-server-proxy, which forwards
        it: any app could then act as the user on this server.""",
    ).tag(config=True)

    serverproxy_launcher = Bool(
        False,
        help="""List the apps as launcher entries at ``<base>/server-proxy/servers-info``,
        the endpoint jupyter-server-proxy's JupyterLab extension reads. Off by default:
        hpcgate's own extension shows the apps, and the other one's tiles would repeat
        them; that extension still finds the endpoint (and the icons) either way.""",
    ).tag(config=True)

    load_serverproxy_entry_points = Bool(
        True,
        help="""Load app specs from jupyter-server-proxy's ``jupyter_serverproxy_servers``
        entry points and from ``c.ServerProxy.servers``.""",
    ).tag(config=True)

    default_start_timeout = Float(
        120.0,
        help="""Seconds an app may take to become ready when its spec sets no ``timeout``.
        Generous because first starts on HPC nodes read software from shared file
        systems.""",
    ).tag(config=True)

    stop_grace_period = Float(
        10.0,
        help="""Seconds between SIGTERM and SIGKILL when an app's process group is stopped,
        unless its spec sets ``stop_timeout``.""",
    ).tag(config=True)

    log_tail_bytes = Int(
        64 * 1024,
        help="Bytes of each app's combined stdout/stderr kept for the log API.",
    ).tag(config=True)

    socket_dir = Unicode(
        help="""Directory for apps' unix sockets and runtime files; created with mode
        0700 and refused if another user owns it. Default: a fresh directory per server
        under ``$XDG_RUNTIME_DIR`` when that is the user's own, else under the
        temporary directory.""",
    ).tag(config=True)

    app_setup = List(
        Unicode(),
        default_value=[],
        help="""Shell lines run before every app's command, before the app's own
        ``setup`` lines: typically ``module load`` lines or a venv activation that
        puts the apps' programs on PATH on this system.""",
    ).tag(config=True)

    bwrap_path = Unicode(
        "bwrap",
        help="bubblewrap executable used for apps with ``isolate_network``.",
    ).tag(config=True)

    @default("socket_dir")
    def _default_socket_dir(self) -> str:
        self._own_socket_dir = True
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        try:
            usable = bool(runtime) and os.stat(runtime).st_uid == os.getuid() and os.access(runtime, os.W_OK)
        except OSError:
            usable = False
        return tempfile.mkdtemp(prefix="hpcgate-apps-", dir=runtime if usable else None)

    _own_socket_dir = False

    def initialize_settings(self) -> None:
        # link time: before jupyter-resource-usage builds its ResourceUseDisplay at load
        display = self.serverapp.config.ResourceUseDisplay
        if self.resource_display_cpu and "track_cpu_percent" not in display:
            display.track_cpu_percent = True

    def initialize_handlers(self) -> None:
        serverapp = self.serverapp
        assert serverapp is not None
        if self.malloc_mmap_threshold > 0:
            tune_malloc(self.malloc_mmap_threshold)
        settings = serverapp.web_app.settings
        cfg = serverapp.config
        serverproxy = ServerProxy(parent=serverapp)
        servers: dict[str, Any] = {}
        if self.load_serverproxy_entry_points:
            servers = dict(serverproxy.servers)
        if serverapp.jpserver_extensions.get("jupyter_server_proxy"):
            self.log.warning(
                "hpcgate.lab: jupyter_server_proxy is enabled too; hpcgate serves /proxy/ and named apps. "
                "Disable it with c.ServerApp.jpserver_extensions = {'jupyter_server_proxy': False}"
            )
        own_apps: dict[str, Any] = {}
        if self.apps_file:
            try:
                own_apps.update(load_apps_file(self.apps_file))
            except SpecError as exc:
                self.log.error("hpcgate.lab: c.HPCGateLab.apps_file is left out: %s", exc)
        own_apps.update(self.apps)
        specs = collect_specs(
            servers, own_apps, self.load_serverproxy_entry_points, self.load_entry_points,
            catalog_apps=self._catalog_app_specs(),
        )
        manager = AppManager(
            specs,
            base_url=settings.get("base_url", "/"),
            socket_dir=str(private_socket_dir(self.socket_dir)),
            default_timeout=self.default_start_timeout,
            stop_grace_period=self.stop_grace_period,
            log_tail_bytes=self.log_tail_bytes,
            check_owner=self.check_socket_owner,
            bwrap_path=self.bwrap_path,
            cwd=getattr(serverapp, "root_dir", None) or None,
            setup=list(self.app_setup),
        )
        own_allowlist = "host_allowlist" in cfg.get("HPCGateLab", {})
        self.lab = LabContext(
            self, manager, settings,
            host_allowlist=None if own_allowlist or not serverproxy.allowlist_configured() else serverproxy.host_allowlist,
            non_service_rewrite_response=serverproxy.rewriters(),
        )
        settings["hpcgate_lab"] = self.lab
        atexit.register(manager.kill_all_now)
        # tornado tries the patterns in order, for every request: the proxy/<port> routes
        # (most requests; no other route starts with proxy/) first, the named apps after
        # the lab's own API routes (an app may not shadow them)
        routes = proxy_handlers(self.lab)
        self.handlers.extend(routes[:PORT_ROUTES])
        self.handlers.extend(api_handlers(self.lab))
        self.handlers.extend(serverproxy_api_handlers(self.lab, self.serverproxy_launcher))
        self.handlers.extend(session_handlers())
        self.handlers.extend(routes[PORT_ROUTES:])
        self.handlers.extend(metrics_handlers(self.lab.metrics))
        # before every route: small GETs that the auth cache knows (hpcgate.lab.proxy.lean)
        LeanRouter(serverapp.web_app, self.lab).install()
        self.log.info("hpcgate.lab: %d app(s): %s", len(specs), ", ".join(sorted(specs)) or "none")
        self._install_kernels()

    def _install_kernels(self) -> None:
        """The catalog's module kernels as kernelspecs, first on the search path."""
        if not self.catalog_kernels:
            return
        data_dir = os.path.join(str(private_socket_dir(self.socket_dir)), "jupyter-data")
        directory = os.path.join(data_dir, "kernels")
        names = write_kernelspecs(self.catalog_kernels, directory)
        # on JUPYTER_PATH as well: jupyterlmod rebuilds kernel_dirs from it after a
        # module changes JUPYTER_PATH, which would drop a directory only added below
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (data_dir, os.environ.get("JUPYTER_PATH")) if p)
        ksm = self.serverapp.kernel_spec_manager
        if directory not in ksm.kernel_dirs:
            ksm.kernel_dirs.insert(0, directory)
        self.log.info("hpcgate.lab: kernels from modules: %s", ", ".join(names))

    def _catalog_app_specs(self) -> dict[str, dict[str, Any]]:
        """Full specs of ``catalog_apps``; one the lab cannot use is logged and left out."""
        specs = {}
        for name, raw in self.catalog_apps.items():
            try:
                if not isinstance(raw, dict):
                    raise SpecError(f"app {name!r} must be a mapping of spec keys")
                specs[str(name)] = command_app(str(name), raw)
            except SpecError as exc:
                self.log.error("hpcgate.lab: the catalog's app %r is left out: %s", name, exc)
        return specs

    async def stop_extension(self) -> None:
        lab = getattr(self, "lab", None)
        if lab is None:
            return
        await lab.manager.stop_all()
        lab.pool.close()
        if self._own_socket_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.socket_dir)
