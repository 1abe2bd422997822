"""Kernels from environment modules: kernelspecs from the catalog and the provisioner
that loads their modules with Lmod before the kernel starts.

The hub hands a system's kernels to the lab in ``$HPCGATE_KERNELS`` (JSON: name ->
``{display_name, modules, argv, language}``, see :class:`hpcgate.catalog.Kernel`).
:func:`write_kernelspecs` writes one kernelspec per kernel into the server's private
directory; :class:`hpcgate.lab.extension.HPCGateLab` puts that directory first in the
kernel spec manager's search path, so JupyterLab's launcher shows them.

Each kernelspec names the ``hpcgate-modules`` kernel provisioner
(:class:`ModuleProvisioner`, a jupyter_client ``LocalProvisioner``). Before the kernel
starts it runs ``$LMOD_CMD python load <modules>`` (no shell: module names are argv
words, checked against :data:`hpcgate.catalog.MODULE_PATTERN` again here) and applies
the environment changes Lmod prints -- parsed, never executed. When Lmod refuses (an
unknown module, a module's ``LmodError``), the start fails with :class:`ModuleLoadError`
carrying Lmod's own message, which JupyterLab shows in its "Error Starting Kernel"
dialog; no kernel process is started.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado import web
from traitlets import Float, List, Unicode

from ..catalog import MODULE_PATTERN, NAME_PATTERN

#: Name of the provisioner (entry point group ``jupyter_client.kernel_provisioners``).
PROVISIONER = "hpcgate-modules"
#: Prefix of the kernelspec names hpcgate writes.
SPEC_PREFIX = "hpcgate-"
#: Where Debian's lmod package puts the command when ``$LMOD_CMD`` is not set.
DEFAULT_LMOD = "/usr/share/lmod/lmod/libexec/lmod"

_SET = re.compile(r'^os\.environ\[("(?:[^"\\]|\\.)*")\] = ("(?:[^"\\]|\\.)*");?$')
_UNSET = re.compile(r'^del os\.environ\[("(?:[^"\\]|\\.)*")\];?$')
_QUIET = re.compile(r"^(import os|_mlstatus = (True|False))?;?$")


class ModuleLoadError(web.HTTPError, RuntimeError):
    """The module system refused to load a kernel's modules; the message is its own.

    An HTTP error as well, so that the Jupyter server answers the kernel (or session)
    start with the message itself (``{"message": ...}``, shown by JupyterLab's "Error
    Starting Kernel" dialog) instead of "Unhandled error"."""

    def __init__(self, message: str):
        super().__init__(500, message, reason="Loading the kernel's modules failed")
        self.message = message

    def __str__(self) -> str:
        return self.message


def kernels_from_env(text: str) -> dict[str, dict[str, Any]]:
    """``$HPCGATE_KERNELS`` -> name -> kernel; ValueError naming what is wrong.

    Validated again here (the lab does not trust its environment more than the
    catalog): names, module names, argv words and the ``{connection_file}`` argument."""
    data = json.loads(text) if text else {}
    if not isinstance(data, dict):
        raise ValueError("$HPCGATE_KERNELS must be a JSON object of kernels by name")
    kernels = {}
    for name, raw in data.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"kernel name {str(name)[:40]!r} is not a valid name")
        if not isinstance(raw, dict):
            raise ValueError(f"kernel {name!r} must be an object")
        modules, argv = raw.get("modules"), raw.get("argv")
        if not (isinstance(modules, list) and modules and all(isinstance(m, str) and re.fullmatch(MODULE_PATTERN, m) for m in modules)):
            raise ValueError(f"kernel {name!r}: modules must be a list of module names")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv)):
            raise ValueError(f"kernel {name!r}: argv must be a list of words")
        if not any("{connection_file}" in a for a in argv):
            raise ValueError(f"kernel {name!r}: argv must pass {{connection_file}}")
        display = raw.get("display_name") or name
        language = raw.get("language") or "python"
        if not isinstance(display, str) or not isinstance(language, str):
            raise ValueError(f"kernel {name!r}: display_name and language must be strings")
        kernels[name] = {"display_name": display, "modules": modules, "argv": argv, "language": language}
    return kernels


def kernelspec(kernel: dict[str, Any]) -> dict[str, Any]:
    """The kernel.json of one kernel: its argv, run by :class:`ModuleProvisioner`."""
    return {
        "argv": list(kernel["argv"]),
        "display_name": kernel["display_name"],
        "language": kernel["language"],
        "metadata": {
            "hpcgate": {"modules": list(kernel["modules"])},
            "kernel_provisioner": {"provisioner_name": PROVISIONER, "config": {"modules": list(kernel["modules"])}},
        },
    }


def write_kernelspecs(kernels: dict[str, dict[str, Any]], directory: str | os.PathLike[str]) -> list[str]:
    """Write one ``<directory>/hpcgate-<name>/kernel.json`` per kernel (directories
    0755 inside the caller's private directory); returns the spec names."""
    names = []
    for name, kernel in kernels.items():
        spec_dir = Path(directory) / f"{SPEC_PREFIX}{name}"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(kernel), indent=1), encoding="utf-8")
        names.append(spec_dir.name)
    return names


def parse_lmod_python(stdout: str) -> tuple[dict[str, str], list[str]]:
    """Lmod's ``python`` shell output -> (variables set, variables unset).

    Only ``os.environ[...] = "..."`` and ``del os.environ[...]`` lines are taken, as
    string literals; any other line (a module's ``execute{}``) is ignored, not run."""
    changed: dict[str, str] = {}
    removed: list[str] = []
    for line in stdout.splitlines():
        line = line.strip()
        if match := _SET.match(line):
            changed[ast.literal_eval(match.group(1))] = ast.literal_eval(match.group(2))
        elif match := _UNSET.match(line):
            removed.append(ast.literal_eval(match.group(1)))
    return changed, removed


async def load_modules(modules: list[str], env: dict[str, str], lmod: str, timeout: float) -> dict[str, str]:
    """``env`` after ``module load <modules>``; ModuleLoadError with Lmod's message."""
    for module in modules:
        if not re.fullmatch(MODULE_PATTERN, module):
            raise ModuleLoadError(f"{module[:60]!r} is not a module name.")
    if not os.path.isfile(lmod):
        raise ModuleLoadError(
            f"The module system (Lmod) is not installed here: {lmod} does not exist, so the "
            f"modules {' '.join(modules)} cannot be loaded."
        )
    # one line per message: Lmod wraps at the terminal width otherwise
    lmod_env = {**env, "LMOD_TERM_WIDTH": env.get("LMOD_TERM_WIDTH", "1000")}
    proc = await asyncio.create_subprocess_exec(
        lmod, "python", "load", *modules, env=lmod_env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ModuleLoadError(f"Loading the modules {' '.join(modules)} took more than {timeout:g} s.") from None
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or "_mlstatus = False" in stdout:
        raise ModuleLoadError(
            f"Loading the modules {' '.join(modules)} failed:\n{stderr or f'Lmod exited with status {proc.returncode}'}"
        )
    changed, removed = parse_lmod_python(stdout)
    result = {k: v for k, v in env.items() if k not in removed}
    result.update(changed)
    return result


class ModuleProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A local kernel started with environment modules loaded (Lmod)."""

    modules = List(Unicode(), help="Modules loaded, in order, before the kernel starts.").tag(config=True)

    lmod_cmd = Unicode(
        help="The Lmod command (``$LMOD_CMD``, else Debian's /usr/share/lmod/lmod/libexec/lmod).",
    ).tag(config=True)

    load_timeout = Float(60.0, help="Seconds the module loads may take before the start fails.").tag(config=True)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        env = dict(kwargs.get("env") or os.environ)
        lmod = self.lmod_cmd or env.get("LMOD_CMD") or os.environ.get("LMOD_CMD") or DEFAULT_LMOD
        env = await load_modules(list(self.modules), env, lmod, self.load_timeout)
        kwargs["env"] = env
        kwargs = await super().pre_launch(**kwargs)
        # jupyter_client swaps a bare "python"/"python3" for the server's own Python:
        # the kernel must run the Python the modules put on PATH
        argv0 = self.kernel_spec.argv[0]
        if os.sep not in argv0:
            found = shutil.which(argv0, path=env.get("PATH", ""))
            if found is None:
                raise ModuleLoadError(
                    f"The modules {' '.join(self.modules)} loaded, but {argv0!r} is not on the PATH they set."
                )
            kwargs["cmd"] = [found, *kwargs["cmd"][1:]]
        return kwargs
