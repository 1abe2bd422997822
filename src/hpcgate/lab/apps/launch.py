"""What happens around an app's command: set-up lines, user parameters, availability.

Contracts:

* ``with_setup`` runs admin-provided shell lines (``module load ...``) and then
  ``exec``s the command, which reaches the shell as positional arguments: no part of
  the command (nor any user value in it) is ever parsed by the shell.
* ``resolve_parameters`` returns only validated strings and changes nothing on disk:
  directories lie inside the work area and exist (or may be created, which
  ``create_directories`` does once the start goes ahead), given as absolute paths;
  text has no control characters. Errors are sentences for the user.
* ``missing_programs`` answers which ``requires`` programs cannot be found, and whether
  the command's own program can (a command built by a plugin's function is built once
  for that, with placeholder values; a function that raises makes the app unavailable
  with the function's message), looking through the set-up lines when there are any
  (they may change ``PATH``). So an app that cannot start is said to be unavailable
  before anyone starts it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ...appspec import AppSpec, render

SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
SETUP_CHECK_TIMEOUT = 120.0  # module systems on shared file systems can be slow


class ParameterError(ValueError):
    """A user-supplied parameter is unusable; the message says what to change."""


def base_environ() -> dict[str, str]:
    """The server's environment with its own ``bin`` directory at the end of ``PATH``:
    programs installed next to the lab (``pip install tensorboard``) are found even
    when the job did not activate the environment."""
    env = dict(os.environ)
    own_bin = os.path.dirname(sys.executable)
    parts = env.get("PATH", os.defpath).split(os.pathsep)
    if own_bin not in parts:
        env["PATH"] = os.pathsep.join([*parts, own_bin])
    return env


def with_setup(argv: list[str], lines: list[str], name: str) -> list[str]:
    """``argv`` preceded by the set-up ``lines`` in one shell, or ``argv`` if none."""
    if not lines:
        return argv
    script = "\n".join(lines) + '\nexec "$@"\n'
    return [SHELL, "-c", script, f"hpcgate-app-{name}", *argv]


def resolve_parameters(spec: AppSpec, given: dict[str, Any] | None, cwd: str | None) -> dict[str, str]:
    """The spec's parameters filled from ``given`` (or defaults), validated.

    Touches nothing: a directory that does not exist yet (``create: true``) is only
    checked, :func:`create_directories` makes it once the start goes ahead. Every
    directory must lie inside the work area ``cwd`` (the server's root directory),
    after ``~``, ``..`` and symbolic links are resolved.
    """
    given = dict(given or {})
    unknown = set(given) - set(spec.parameters)
    if unknown:
        raise ParameterError(f"{spec.family or spec.name} has no parameter {sorted(unknown)[0]!r}")
    root = Path(cwd or os.getcwd()).resolve()
    values = {}
    for pname, pspec in spec.parameters.items():
        raw = given.get(pname, pspec.get("default", ""))
        if not isinstance(raw, str):
            raise ParameterError(f"{pspec['title']} must be text")
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise ParameterError(f"{pspec['title']} must not contain control characters")
        if pspec["kind"] == "directory":
            path = Path(os.path.expanduser(raw or "."))
            if not path.is_absolute():
                path = root / path
            path = path.resolve()
            if path != root and root not in path.parents:
                raise ParameterError(f"{pspec['title']}: {raw!r} is outside your work area {root}; pick a directory inside it")
            if path.exists() or not pspec.get("create"):
                if not path.is_dir():
                    raise ParameterError(f"{pspec['title']}: {raw!r} is not a directory; create it or pick another one")
            else:
                parent = next(p for p in path.parents if p.exists())
                if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                    raise ParameterError(f"{pspec['title']}: cannot create {raw!r} in {parent}; pick another directory")
            raw = str(path)
        values[pname] = raw
    return values


def create_directories(spec: AppSpec, values: dict[str, str]) -> None:
    """Make the missing directories of ``create: true`` parameters (already validated by
    :func:`resolve_parameters`); raises ParameterError naming the one that failed."""
    for pname, pspec in spec.parameters.items():
        if pspec["kind"] == "directory" and pspec.get("create") and not os.path.isdir(values[pname]):
            try:
                os.makedirs(values[pname], mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ParameterError(f"{pspec['title']}: cannot create {values[pname]!r}: {exc.strerror}") from None


#: Values the command of an app is built with to learn its program (never run).
PROBE_ARGS = {"port": 1, "unix_socket": "/nonexistent/probe.sock", "base_url": "/", "app_dir": "/nonexistent"}


def command_program(spec: AppSpec) -> tuple[str, str]:
    """``(program, "")`` the app's command runs, or ``("", why)`` if it cannot be built.

    A plugin's command function is called here with placeholder values; functions that
    look their program up (and raise when it is missing) thereby say so before a start.
    """
    args = {
        **PROBE_ARGS,
        "app_name": spec.name,
        **{name: str(p.get("default", "")) for name, p in spec.parameters.items()},
    }
    try:
        argv = render(spec.command, args)
    except Exception as exc:  # a plugin's function: whatever it raises means "cannot start"
        return "", (str(exc) or type(exc).__name__)
    if not argv or not isinstance(argv, list) or not isinstance(argv[0], str) or not argv[0]:
        return "", "its command is empty"
    return argv[0], ""


def _findable(program: str, path: str | None) -> bool:
    if os.sep in program:
        return os.access(program, os.X_OK) and not os.path.isdir(program)
    return shutil.which(program, path=path) is not None


async def missing_programs(spec: AppSpec, lines: list[str], env: dict[str, str] | None = None) -> list[dict[str, str]]:
    """What keeps the app from starting: ``{"program", "install"}`` entries, ``[]`` if nothing.

    The ``requires`` entries whose program is not found, then the command's own program
    (``install``: "not found on PATH", or the message of a command function that
    raised) -- after ``lines``, if any.
    """
    env = env if env is not None else base_environ()
    path = env.get("PATH")
    missing = [r for r in spec.requires if not _findable(r["program"], path)]
    if spec.managed:
        program, why = command_program(spec)
        if why:
            return [*missing, {"program": f"the command of {spec.name}", "install": why}]
        if program not in {r["program"] for r in spec.requires} and not _findable(program, path):
            missing.append({"program": program, "install": "not found on PATH; install it or load its module"})
    if not missing or not lines:
        return missing
    checks = " && ".join(f"command -v {shlex.quote(r['program'])} >/dev/null" for r in missing)
    proc = await asyncio.create_subprocess_exec(
        SHELL, "-c", "\n".join(lines) + "\n" + checks,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=env, start_new_session=True,
    )
    try:
        async with asyncio.timeout(SETUP_CHECK_TIMEOUT):
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return missing
    return [] if code == 0 else missing
