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

from collections.abc import Mapping
from typing import Any

from hpcgate.appspec import SpecError, expand_short_form

from . import ICONS, icon


def command_app(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A full spec from the short form (:func:`hpcgate.appspec.expand_short_form`),
    with a bare ``icon`` name resolved to one of the recipes' icons."""
    return expand_short_form(name, raw, _icon_path)


def _icon_path(value: Any) -> str:
    """An icon file's path; a bare name picks one of the recipes' icons (``desktop``,
    ``scalars``, ``tracking``, ``vnc``, ``app``)."""
    if not value:
        return icon("app")
    value = str(value)
    if "/" not in value and (ICONS / f"{value}.svg").is_file():
        return icon(value)
    return value


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
