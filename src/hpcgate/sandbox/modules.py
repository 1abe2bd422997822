"""The sandbox's environment modules: a small Lmod module tree, world-readable.

``<state_dir>/modules`` holds

- ``python-stack/1.0``: the job environment's Python (with ipykernel) first on PATH,
  the "Python stack" a centre would offer as a module;
- ``hpcgate-demo/1.0``: sets ``HPCGATE_DEMO_MODULE`` (what the kernel tests read back);
- ``broken/1.0``: refuses to load with an ``LmodError`` (the kernel's start must fail
  with that message, not leave a dead kernel).

The catalog (:mod:`hpcgate.sandbox.catalog`) puts the tree on ``MODULEPATH`` of both
systems and offers kernels built from these modules. Lmod itself is Debian's ``lmod``.
"""

from __future__ import annotations

from pathlib import Path

from . import layout as L
from .proc import make_dir, write_file

#: Value the demo module gives HPCGATE_DEMO_MODULE.
DEMO_VALUE = "loaded by Lmod from the sandbox's module tree"
#: The message of the module that refuses to load.
BROKEN_MESSAGE = "broken/1.0 cannot load: its licence server does not answer (sandbox demo)"
#: Debian's Lmod command.
LMOD_CMD = "/usr/share/lmod/lmod/libexec/lmod"


def module_dir(lay: L.Layout) -> Path:
    return lay.state_dir / "modules"


def _lua_string(text: str) -> str:
    assert '"' not in text and "\\" not in text and "\n" not in text
    return f'"{text}"'


def write_modules(lay: L.Layout) -> Path:
    """Write the module tree (directories 0755, files 0644); return its root."""
    root = make_dir(module_dir(lay), 0o755)
    files = {
        "python-stack/1.0.lua": (
            'whatis("The sandbox job environment\'s Python with ipykernel and JupyterLab")\n'
            f'prepend_path("PATH", {_lua_string(str(lay.venv_dir / "bin"))})\n'
            'setenv("PYTHONNOUSERSITE", "1")\n'
        ),
        "hpcgate-demo/1.0.lua": (
            'whatis("Sets HPCGATE_DEMO_MODULE, for hpcgate\'s kernel tests")\n'
            f'setenv("HPCGATE_DEMO_MODULE", {_lua_string(DEMO_VALUE)})\n'
        ),
        "broken/1.0.lua": f"LmodError({_lua_string(BROKEN_MESSAGE)})\n",
    }
    for rel, text in files.items():
        path = root / rel
        make_dir(path.parent, 0o755)
        write_file(path, text, 0o644)
    return root


def kernels() -> dict[str, dict]:
    """The kernels the sandbox catalog offers (catalog ``kernels``)."""
    return {
        "demo": {"display_name": "Python (python-stack + hpcgate-demo)", "modules": ["python-stack/1.0", "hpcgate-demo/1.0"]},
        "broken": {"display_name": "Python (broken module)", "modules": ["python-stack/1.0", "broken/1.0"]},
    }
