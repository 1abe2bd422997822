"""App specs: what an app is, where specs come from, and how templates are filled.

Neutral ground: the hub's catalog validates its ``apps`` with this module and the lab
(:mod:`hpcgate.lab`) runs them from it; it imports neither side.

A spec is a dict with jupyter-server-proxy's server keys (``command``, ``environment``,
``timeout``, ``absolute_url``, ``port``, ``unix_socket``, ``mappath``,
``launcher_entry``, ``new_browser_tab``, ``request_headers_override``,
``rewrite_response``, ``update_last_activity``, ``exclude_last_activity_patterns``,
``raw_socket_proxy``) plus hpcgate's own lifecycle keys:

``ready_check``
    ``"socket"`` (a connect suffices) or ``{"path": "/health", "status": 200}``
    (``status`` an int or list; default: any status below 500).
``restart``
    ``"on-failure"`` (default), ``"always"`` (also after a clean exit) or ``"never"``.
``max_restarts``
    automatic restarts in a row before the app is left ``failed`` (default 5).
``idle_timeout``
    seconds without proxied traffic after which the app is stopped (0: never).
``stop_timeout``
    seconds between SIGTERM and SIGKILL (default: ``HPCGateLab.stop_grace_period``).
``isolate_network``
    ``true``: run the command under bubblewrap in its own network namespace, reached
    only through its unix socket (an app on a TCP ``{port}`` gets a bridge inside the
    namespace that offers the port as a unix socket); ``"auto"``: the same where
    bubblewrap works, plain TCP on 127.0.0.1 elsewhere (said in the app's log).
``requires``
    programs the command needs, as ``{"program": "xpra", "install": "the xpra
    package"}`` dicts (or bare names). An app whose programs are not on ``PATH``
    (after its ``setup`` lines) is listed as unavailable with that install hint.
``setup``
    shell lines run before the command (``module load ...``); the command itself is
    passed to that shell as arguments, never interpolated into it.
``instances``
    how many copies may run at once (default 1): copies are named ``<name>-2``,
    ``<name>-3``...; ``POST .../apps/<name>/new`` starts the first free one.
``parameters``
    values the user gives at start, by name: ``{"title": ..., "kind": "directory"
    | "text", "default": ...}``; used in templates as ``{name}``.
``static_files``
    ``{"dir": "/usr/share/novnc", "index": "vnc.html?..."}``: plain HTTP requests
    are answered with files from ``dir`` (websockets still go to the app); ``/``
    redirects to ``index``, whose templates may use ``{prefix}`` (the app's path
    without the leading slash).

Sources, later ones overriding earlier ones by name: ``jupyter_serverproxy_servers``
entry points, ``hpcgate_apps`` entry points (a recipe and a plugin of the same name are
both kept: the plugin as ``<name>-plugin``), ``c.ServerProxy.servers``, the hub
catalog's ``apps`` (``$HPCGATE_APPS``), ``c.HPCGateLab.apps_file`` and
``c.HPCGateLab.apps``. Template strings may use ``{port}``, ``{unix_socket}`` and
``{base_url}``, plus hpcgate's ``{app_dir}`` (a private directory per app instance
for its runtime files), ``{app_name}`` (the instance's name, also its URL path) and
the app's ``parameters``; callables receive only the arguments they name.

As in jupyter-server-proxy: an ``update_last_activity`` callable gets the request
handler and says whether the request counts as activity; ``exclude_last_activity_patterns``
match from the start of the request path; ``rewrite_response`` callables get a
:class:`hpcgate.lab.proxy.http.RewritableResponse` named ``response`` (and, if they
name them, ``orig_response``, ``request``, ``host``, ``port``, ``path``).
"""

from __future__ import annotations

import inspect
import logging
import re
import shlex
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names that would shadow the server's own routes or ours.
RESERVED = frozenset({"proxy", "hpcgate", "api", "lab", "tree", "static", "files", "login", "logout", "nbconvert", "kernelspecs", "notebooks", "edit", "view", "terminals", "custom", "nbextensions"})
RESTART_POLICIES = ("on-failure", "always", "never")

JSP_KEYS = frozenset(
    {
        "command",
        "environment",
        "timeout",
        "absolute_url",
        "port",
        "unix_socket",
        "mappath",
        "launcher_entry",
        "new_browser_tab",
        "request_headers_override",
        "rewrite_response",
        "update_last_activity",
        "exclude_last_activity_patterns",
        "raw_socket_proxy",
        "progressive",  # accepted and ignored: hpcgate always streams
    }
)
OWN_KEYS = frozenset(
    {
        "ready_check",
        "restart",
        "max_restarts",
        "idle_timeout",
        "stop_timeout",
        "isolate_network",
        "requires",
        "setup",
        "instances",
        "parameters",
        "static_files",
    }
)
PARAMETER_KINDS = ("directory", "text")
MAX_INSTANCES = 16


class SpecError(ValueError):
    """A spec that cannot be used; the message names the app and the key."""


def call_with_named_args(func: Callable[..., Any], available: Mapping[str, Any]) -> Any:
    """Call ``func`` passing only those of ``available`` that its signature names.

    A required parameter that is not available raises :class:`TypeError`.
    """
    kwargs = {}
    for name, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in available:
            kwargs[name] = available[name]
        elif param.default is param.empty:
            raise TypeError(f"{getattr(func, '__name__', func)}() needs argument {name!r}, which hpcgate does not provide")
    return func(**kwargs)


def render(value: Any, args: Mapping[str, Any]) -> Any:
    """Fill ``{port}``/``{unix_socket}``/``{base_url}`` in a str, list or dict (keys too)."""
    if callable(value):
        value = call_with_named_args(value, args)
    if isinstance(value, str):
        return value.format(**args)
    if isinstance(value, (list, tuple)):
        return [render(v, args) for v in value]
    if isinstance(value, Mapping):
        return {render(k, args): render(v, args) for k, v in value.items()}
    raise SpecError(f"cannot fill templates in a value of type {type(value).__name__}")


@dataclass
class AppSpec:
    """One app, validated. ``command`` empty means the app is started by someone else."""

    name: str
    command: list[str] | Callable[..., Any] = field(default_factory=list)
    environment: dict[str, str] | Callable[..., Any] = field(default_factory=dict)
    timeout: float | None = None
    absolute_url: bool = False
    port: int = 0
    unix_socket: bool | str = False
    mappath: dict[str, str] | Callable[..., Any] = field(default_factory=dict)
    launcher_entry: dict[str, Any] = field(default_factory=dict)
    new_browser_tab: bool = True
    request_headers_override: dict[str, str] | Callable[..., Any] = field(default_factory=dict)
    rewrite_response: list[Callable[..., Any]] = field(default_factory=list)
    update_last_activity: bool | Callable[..., Any] = True
    exclude_last_activity_patterns: list[re.Pattern[str]] = field(default_factory=list)
    raw_socket_proxy: bool = False
    ready_check: str | dict[str, Any] = field(default_factory=dict)
    restart: str = "on-failure"
    max_restarts: int = 5
    idle_timeout: float = 0.0
    stop_timeout: float | None = None
    isolate_network: bool | str = False
    requires: list[dict[str, str]] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    instances: int = 1
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    static_files: dict[str, str] = field(default_factory=dict)
    source: str = "config"
    #: the spec's own name; differs from ``name`` for the 2nd, 3rd... instance
    family: str = ""

    @property
    def managed(self) -> bool:
        return bool(self.command)

    def map_path(self, path: str) -> str:
        """Apply ``mappath`` to a request path (after the app's prefix)."""
        if callable(self.mappath):
            return call_with_named_args(self.mappath, {"path": path})
        return self.mappath.get(path, path)

    def launcher(self) -> dict[str, Any]:
        """The launcher entry with jupyter-server-proxy's defaults filled in."""
        entry = {"enabled": True, "title": self.name, "path_info": self.name + "/", "category": "Notebook", "icon_path": ""}
        entry.update(self.launcher_entry)
        return entry

    def ready_http(self) -> tuple[str, frozenset[int] | None] | None:
        """``(path, accepted statuses or None for 'below 500')``, or ``None`` for a socket check."""
        check = self.ready_check
        if check == "socket" or (not check and self.raw_socket_proxy):
            return None
        check = check or {}
        status = check.get("status")
        if status is None:
            accepted = None
        elif isinstance(status, int):
            accepted = frozenset({status})
        else:
            accepted = frozenset(int(s) for s in status)
        return check.get("path", "/"), accepted


def _as_bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"app {name!r}: {key} must be true or false, not {value!r}")
    return value


def make_spec(name: str, raw: Mapping[str, Any], source: str = "config") -> AppSpec:
    """Validate one raw spec dict into an :class:`AppSpec` (raises :class:`SpecError`)."""
    if not NAME_RE.match(name) or name.lower() in RESERVED:
        raise SpecError(f"app name {name!r} is not allowed: use letters, digits, '.', '_', '-' and avoid {sorted(RESERVED)}")
    unknown = set(raw) - JSP_KEYS - OWN_KEYS
    if unknown:
        log.warning("app %r (%s): ignoring unknown keys %s", name, source, sorted(unknown))
    spec = AppSpec(name=name, source=source)
    command = raw.get("command") or []
    if not callable(command) and not (isinstance(command, (list, tuple)) and all(isinstance(c, str) for c in command)):
        raise SpecError(f"app {name!r}: command must be a list of strings or a callable")
    spec.command = command if callable(command) else list(command)
    for key in ("environment", "mappath", "request_headers_override"):
        if key in raw:
            value = raw[key]
            if not (callable(value) or isinstance(value, Mapping)):
                raise SpecError(f"app {name!r}: {key} must be a dict or a callable")
            setattr(spec, key, value if callable(value) else dict(value))
    if raw.get("timeout") is not None:
        spec.timeout = float(raw["timeout"])
    for key in ("absolute_url", "new_browser_tab", "raw_socket_proxy"):
        if key in raw:
            setattr(spec, key, _as_bool(name, key, raw[key]))
    isolate = raw.get("isolate_network", False)
    if not (isinstance(isolate, bool) or isolate == "auto"):
        raise SpecError(f"app {name!r}: isolate_network must be true, false or 'auto', not {isolate!r}")
    spec.isolate_network = isolate
    spec.port = int(raw.get("port") or 0)
    if not 0 <= spec.port <= 65535:
        raise SpecError(f"app {name!r}: port {spec.port} is out of range")
    unix_socket = raw.get("unix_socket")
    if unix_socket not in (None, False):
        if unix_socket is not True and not isinstance(unix_socket, str):
            raise SpecError(f"app {name!r}: unix_socket must be true or a path")
        spec.unix_socket = unix_socket
    entry = raw.get("launcher_entry") or {}
    spec.launcher_entry = dict(entry) if isinstance(entry, Mapping) else {k: getattr(entry, k) for k in ("enabled", "title", "path_info", "category", "icon_path") if hasattr(entry, k)}
    rewrite = raw.get("rewrite_response") or []
    spec.rewrite_response = list(rewrite) if isinstance(rewrite, (list, tuple)) else [rewrite]
    if not all(callable(f) for f in spec.rewrite_response):
        raise SpecError(f"app {name!r}: rewrite_response must be a callable or a list of callables")
    ula = raw.get("update_last_activity", True)
    if not (isinstance(ula, bool) or callable(ula)):
        raise SpecError(f"app {name!r}: update_last_activity must be true, false or a callable")
    spec.update_last_activity = ula
    spec.exclude_last_activity_patterns = [re.compile(p) for p in raw.get("exclude_last_activity_patterns") or []]
    check = raw.get("ready_check") or {}
    if not (check == "socket" or isinstance(check, Mapping)):
        raise SpecError(f"app {name!r}: ready_check must be 'socket' or a dict with path and status")
    spec.ready_check = check if isinstance(check, str) else dict(check)
    spec.restart = raw.get("restart", "on-failure")
    if spec.restart not in RESTART_POLICIES:
        raise SpecError(f"app {name!r}: restart must be one of {RESTART_POLICIES}, not {spec.restart!r}")
    spec.max_restarts = int(raw.get("max_restarts", 5))
    spec.idle_timeout = float(raw.get("idle_timeout") or 0)
    if raw.get("stop_timeout") is not None:
        spec.stop_timeout = float(raw["stop_timeout"])
    _own_extras(spec, raw)
    _check_templates(spec)
    if not spec.command and not (spec.port or isinstance(spec.unix_socket, str)):
        raise SpecError(f"app {name!r}: give a command, or the port or unix_socket path of an app started elsewhere")
    return spec


def _own_extras(spec: AppSpec, raw: Mapping[str, Any]) -> None:
    """Validate hpcgate's ``requires``, ``setup``, ``instances``, ``parameters``, ``static_files``."""
    name = spec.name
    for item in raw.get("requires") or []:
        entry = {"program": item} if isinstance(item, str) else dict(item)
        if not isinstance(entry.get("program"), str) or not entry["program"]:
            raise SpecError(f"app {name!r}: each requires entry needs a program name")
        entry.setdefault("install", f"install {entry['program']}")
        spec.requires.append({"program": entry["program"], "install": str(entry["install"])})
    setup = raw.get("setup") or []
    if isinstance(setup, str) or not all(isinstance(line, str) for line in setup):
        raise SpecError(f"app {name!r}: setup must be a list of shell lines")
    spec.setup = list(setup)
    spec.instances = int(raw.get("instances", 1))
    if not 1 <= spec.instances <= MAX_INSTANCES:
        raise SpecError(f"app {name!r}: instances must be between 1 and {MAX_INSTANCES}")
    for pname, pspec in (raw.get("parameters") or {}).items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", pname) or pname in ("port", "unix_socket", "base_url", "app_dir", "app_name"):
            raise SpecError(f"app {name!r}: parameter name {pname!r} is not allowed")
        pspec = dict(pspec)
        if pspec.setdefault("kind", "text") not in PARAMETER_KINDS:
            raise SpecError(f"app {name!r}: parameter {pname!r} kind must be one of {PARAMETER_KINDS}")
        pspec.setdefault("title", pname)
        pspec.setdefault("default", "")
        spec.parameters[pname] = pspec
    static = raw.get("static_files") or {}
    if static:
        if not isinstance(static, Mapping) or not isinstance(static.get("dir"), str):
            raise SpecError(f"app {name!r}: static_files needs a dir")
        spec.static_files = {"dir": static["dir"], "index": str(static.get("index", ""))}
    spec.family = name


#: What templates in ``command`` and ``environment`` may name, besides parameters.
TEMPLATE_NAMES = frozenset({"port", "unix_socket", "base_url", "app_dir", "app_name"})


def _check_templates(spec: AppSpec) -> None:
    """Refuse a template naming a value hpcgate does not provide, now rather than at
    the first start (``{{``/``}}`` stay literal braces)."""
    known = TEMPLATE_NAMES | set(spec.parameters)
    strings: list[str] = []
    if isinstance(spec.command, list):
        strings += spec.command
    if isinstance(spec.environment, dict):
        strings += [str(k) for k in spec.environment] + [str(v) for v in spec.environment.values()]
    for text in strings:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:
            raise SpecError(f"app {spec.name!r}: template {text!r} is malformed ({exc}); write braces as {{{{ and }}}}") from None
        for fname in fields:
            base = re.split(r"[.\[!:]", fname, maxsplit=1)[0]
            if base not in known:
                names = ", ".join("{" + n + "}" for n in sorted(known))
                raise SpecError(f"app {spec.name!r}: template {text!r} names {{{fname}}}; known are {names}")


def _unloadable(reason: str) -> Callable[[], Any]:
    """A command for a plugin that could not be loaded: building it raises ``reason``,
    so the app is listed as unavailable with that reason and never started."""

    def command() -> Any:
        raise RuntimeError(reason)

    return command


def _entry_point_specs(group: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Raw specs of the entry points in ``group``, with their sources.

    A plugin whose set-up function raises (for instance because its program is not on
    ``PATH``) is kept as an unavailable app whose reason is the exception's message.
    """
    found = {}
    for ep in entry_points(group=group):
        try:
            loaded = ep.load()
            raw = loaded() if callable(loaded) else loaded
        except Exception as exc:  # a broken plugin must not take the server down
            log.exception("entry point %s in %s could not be loaded; it is listed as unavailable", ep.name, group)
            reason = f"the plugin could not be loaded: {exc or type(exc).__name__}"
            found[ep.name] = ({"command": _unloadable(reason)}, f"entry point {group}:{ep.name} (not loaded)")
            continue
        if not isinstance(raw, Mapping):
            log.error("entry point %s in %s returned %r, not a dict; skipping it", ep.name, group, type(raw).__name__)
            continue
        found[ep.name] = (dict(raw), f"entry point {group}:{ep.name}")
    return found


#: Suffix of a third-party plugin's name when one of hpcgate's recipes has that name.
PLUGIN_SUFFIX = "-plugin"


def _keep_both(raw: dict[str, tuple[dict[str, Any], str]], name: str, values: dict[str, Any], source: str) -> None:
    """An hpcgate recipe and a jupyter-server-proxy plugin both named ``name``.

    The recipe keeps the name; the plugin moves to ``<name>-plugin`` (``-plugin-2``...
    if that is taken too). The choice is logged and written into both ``source``
    strings, which the lab's API reports.
    """
    plugin_values, plugin_source = raw.pop(name)
    new_name = name + PLUGIN_SUFFIX
    n = 2
    while new_name in raw:
        new_name, n = f"{name}{PLUGIN_SUFFIX}-{n}", n + 1
    log.warning(
        "app %r: hpcgate's recipe (%s) and a jupyter-server-proxy plugin (%s) share the name; "
        "the recipe keeps it, the plugin is served as %r",
        name, source, plugin_source, new_name,
    )
    entry = plugin_values.get("launcher_entry")
    if isinstance(entry, Mapping):
        # its launcher tile opens the plugin, and says which one it is
        entry = dict(entry)
        path = str(entry.get("path_info", name))
        if path == name or path.startswith(name + "/"):
            entry["path_info"] = new_name + path[len(name) :]
        entry["title"] = f"{entry.get('title') or name} (plugin)"
        plugin_values = {**plugin_values, "launcher_entry": entry}
    raw[name] = (values, f"{source} (chosen over {plugin_source}, which is served as {new_name!r})")
    raw[new_name] = (plugin_values, f"{plugin_source} (renamed: hpcgate's recipe {name!r} has its name)")


def collect_specs(
    serverproxy_servers: Mapping[str, Mapping[str, Any]],
    own_apps: Mapping[str, Mapping[str, Any]],
    load_serverproxy_entry_points: bool = True,
    load_own_entry_points: bool = True,
    catalog_apps: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, AppSpec]:
    """All specs by name; invalid ones are logged with the reason and left out.

    ``catalog_apps`` (full specs of the hub catalog's apps) override entry points and
    ``c.ServerProxy.servers``; ``own_apps`` override everything."""
    raw: dict[str, tuple[dict[str, Any], str]] = {}
    if load_serverproxy_entry_points:
        raw.update(_entry_point_specs("jupyter_serverproxy_servers"))
    if load_own_entry_points:
        for name, (values, source) in _entry_point_specs("hpcgate_apps").items():
            if name in raw:
                _keep_both(raw, name, values, source)
            else:
                raw[name] = (values, source)
    raw.update({k: (dict(v), "c.ServerProxy.servers") for k, v in serverproxy_servers.items()})
    raw.update({k: (dict(v), "the hub's catalog") for k, v in (catalog_apps or {}).items()})
    raw.update({k: (dict(v), "c.HPCGateLab.apps") for k, v in own_apps.items()})
    specs = {}
    for name, (values, source) in raw.items():
        try:
            specs[name] = make_spec(name, values, source)
        except (SpecError, TypeError, ValueError) as exc:
            log.error("app %r from %s is left out: %s", name, source, exc)
    return specs


#: Keys of the short form that are not spec keys (see :func:`expand_short_form`).
SHORTHANDS = ("title", "icon", "category", "install")


def expand_short_form(name: str, raw: Mapping[str, Any], icon_path: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """A full spec from the short form (string ``command``, ``title``, ``icon``,
    ``category``, ``install``); keys of a full spec pass through unchanged.

    ``command`` as one string is split like a shell would (``shlex``) *before*
    templates are filled, so no value ever reaches a shell; its first word becomes the
    required program unless ``requires`` says otherwise. ``icon_path`` turns the
    ``icon`` value into the launcher's icon path (default: the value as it is).
    Raises :class:`SpecError`."""
    spec = {k: v for k, v in raw.items() if k not in SHORTHANDS}
    command = raw.get("command")
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise SpecError(f"app {name!r}: command cannot be split into words: {exc}") from None
    if not command:
        raise SpecError(f"app {name!r}: a generic app needs a command")
    spec["command"] = command
    if "requires" not in spec and not command[0].startswith("{"):
        hint = raw.get("install") or f"install {command[0]} or load its module in the app's setup lines"
        spec["requires"] = [{"program": command[0], "install": hint}]
    entry = dict(spec.get("launcher_entry") or {})
    entry.setdefault("title", raw.get("title", name))
    entry.setdefault("icon_path", icon_path(raw.get("icon")) if icon_path else str(raw.get("icon") or ""))
    entry.setdefault("category", raw.get("category", "Apps"))
    spec["launcher_entry"] = entry
    spec.setdefault("timeout", 180.0)
    return spec


def catalog_app(name: str, raw: Mapping[str, Any]) -> AppSpec:
    """Validate an app of the hub's catalog (short or full form) as the lab will
    (raises SpecError)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"app {name!r} must be a mapping of spec keys")
    return make_spec(name, expand_short_form(name, raw), "the hub's catalog")
