"""The Python environment jobs run: hpcgate + jupyterlab + jupyterhub, world-readable.

Built with ``/usr/bin/python3 -m venv`` (the default ``python3`` of this machine kind
lives under a 0700 home that sandbox users cannot enter) at ``<venv_dir>``
(default ``/opt/hpcgate-sandbox/venv``), kept across ``down``/``up``.

hpcgate comes from the source checkout this module was imported from (the directory
holding ``pyproject.toml`` above ``src/hpcgate``):

- ``editable`` when every user can read the checkout (``/work/main`` on a dev machine):
  jobs then always run the current source, and the venv is rebuilt only when
  ``pyproject.toml`` changes;
- ``copy`` (a regular install) otherwise, e.g. a CI clone under a 0700 home; then the
  stamp also hashes the source tree, so changed sources trigger a reinstall.

jupyterhub and jupyterlab are pinned to the versions of the calling environment (the
hub's), so the single-user server matches the hub. The stamp file
``<venv_dir>/.hpcgate-sandbox-stamp.json`` records all of that; a matching stamp skips
the build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import layout as L
from .proc import SandboxError, run

SYSTEM_PYTHON = "/usr/bin/python3"
STAMP = ".hpcgate-sandbox-stamp.json"
PINNED = ("jupyterhub", "jupyterlab")


@dataclass(frozen=True)
class JobEnv:
    path: Path
    mode: str  # "editable" or "copy"
    built: bool  # False: the cached venv was reused
    seconds: float

    @property
    def bin(self) -> Path:
        return self.path / "bin"


def project_root() -> Path:
    """The source checkout hpcgate was imported from; :class:`SandboxError` if none."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "hpcgate").is_dir():
            return parent
    raise SandboxError(
        f"job venv: hpcgate at {here.parent} is not in a source checkout (no pyproject.toml "
        "above src/hpcgate); the sandbox installs hpcgate into the job venv from the checkout"
    )


def world_readable(root: Path) -> bool:
    """True when any user can traverse to ``root`` and read its ``src`` tree."""
    for directory in [root, *root.parents]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    for dirpath, dirnames, filenames in os.walk(root / "src"):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        needed = stat.S_IXOTH | stat.S_IROTH
        if os.stat(dirpath).st_mode & needed != needed:
            return False
        for name in filenames:
            if not os.stat(os.path.join(dirpath, name)).st_mode & stat.S_IROTH:
                return False
    return True


def _tree_hash(root: Path) -> str:
    """sha256 over the paths and contents of the files under ``root/src`` (no caches)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root / "src"):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        files += [Path(dirpath) / name for name in filenames]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def wanted_stamp(root: Path) -> dict[str, str]:
    mode = "editable" if world_readable(root) else "copy"
    stamp = {
        "mode": mode,
        "root": str(root),
        "pyproject": hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest(),
        "python": os.path.realpath(SYSTEM_PYTHON),
    }
    if mode == "copy":
        stamp["source"] = _tree_hash(root)
    for dist in PINNED:
        try:
            stamp[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            stamp[dist] = ""
    return stamp


def read_stamp(venv: Path) -> dict[str, str] | None:
    try:
        data = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ensure_venv(lay: L.Layout, rebuild: bool = False) -> JobEnv:
    """Build (or reuse) the job venv; return where it is and whether it was built."""
    started = time.monotonic()
    root = project_root()
    stamp = wanted_stamp(root)
    venv = lay.venv_dir
    if not rebuild and read_stamp(venv) == stamp and (venv / "bin" / "hpcgate-singleuser").exists():
        return JobEnv(venv, stamp["mode"], False, time.monotonic() - started)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise SandboxError(f"job venv: {SYSTEM_PYTHON} is missing; install Debian's python3 and python3-venv")
    (venv / STAMP).unlink(missing_ok=True)
    if not (venv / "bin" / "python").exists() or rebuild:
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(venv.parent, 0o755)
        run([SYSTEM_PYTHON, "-m", "venv", str(venv)], what=f"creating the job venv {venv}", timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pins = [f"{dist}=={stamp[dist]}" if stamp[dist] else dist for dist in PINNED]
    if stamp["mode"] == "editable":
        run(
            [*pip, "--editable", str(root), *pins],
            what="installing hpcgate (editable) into the job venv",
            timeout=1200,
        )
    else:
        # with its dependencies, then once more to replace an installed copy of the same version
        run([*pip, str(root), *pins], what="installing hpcgate into the job venv", timeout=1200)
        run(
            [*pip, "--force-reinstall", "--no-deps", str(root)],
            what="reinstalling hpcgate into the job venv",
            timeout=300,
        )
    run(["chmod", "-R", "a+rX", str(venv)], what="making the job venv world-readable")
    (venv / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    os.chmod(venv / STAMP, 0o644)
    return JobEnv(venv, stamp["mode"], True, time.monotonic() - started)


def venv_ready(lay: L.Layout) -> bool:
    return (lay.venv_dir / "bin" / "hpcgate-singleuser").exists()
