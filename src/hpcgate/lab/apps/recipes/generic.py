"""Apps from a command template, for anything with a web UI on a port or socket.

An admin describes the app in config (``c.HPCGateLab.apps``) or in the YAML file named
by ``c.HPCGateLab.apps_file``; ``command`` may be one string, which is split like a
shell would (``shlex``) *before* templates are filled, so no value ever reaches a
shell. The first word becomes the required program unless ``requires`` says
otherwise. Examples::

    nest-desktop:
      command: nest-desktop start -h 127.0.0.1 -p {port}
      title: NEST Desktop
      setup: ["module load NEST-Desktop"]
      install: load the NEST-Desktop module (module load NEST-Desktop)
    dask:
      command: dask scheduler --host 127.0.0.1 --port 0 --dashboard-address 127.0.0.1:{port}
      title: Dask dashboard
      ready_check: {path: /status, status: 200}
    ray:
      command: ray start --head --block --include-dashboard=true --dashboard-host 127.0.0.1 --dashboard-port {port}
      title: Ray dashboard
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from hpcgate.appspec import AppSpec, SpecError, make_spec

from . import ICONS, icon

SHORTHANDS = ("title", "icon", "category", "install")


def command_app(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A full spec from the short form (string ``command``, ``title``, ``icon``,
    ``category``, ``install``); keys of a full spec pass through unchanged."""
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
    entry.setdefault("icon_path", _icon_path(raw.get("icon")))
    entry.setdefault("category", raw.get("category", "Apps"))
    spec["launcher_entry"] = entry
    spec.setdefault("timeout", 180.0)
    return spec


def _icon_path(value: Any) -> str:
    """An icon file's path; a bare name picks one of the recipes' icons (``desktop``,
    ``scalars``, ``tracking``, ``vnc``, ``app``)."""
    if not value:
        return icon("app")
    value = str(value)
    if "/" not in value and (ICONS / f"{value}.svg").is_file():
        return icon(value)
    return value


def catalog_app(name: str, raw: Mapping[str, Any]) -> AppSpec:
    """Validate an app of the hub's catalog as the lab will (raises SpecError)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"app {name!r} must be a mapping of spec keys")
    return make_spec(name, command_app(name, raw), "the hub's catalog")


def load_apps_file(path: str) -> dict[str, dict[str, Any]]:
    """App specs from a YAML mapping ``name -> short or full spec`` (raises SpecError)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read the apps file {path}: {exc}") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise SpecError(f"the apps file {path} must map app names to specs")
    return {str(name): command_app(str(name), spec) for name, spec in data.items()}
