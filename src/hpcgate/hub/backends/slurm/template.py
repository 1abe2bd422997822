"""The Slurm job script: rendered from a template, every value shell-quoted.

The job template
----------------
Sandboxed Jinja2 (``jinja2.sandbox.SandboxedEnvironment``) with ``StrictUndefined``: a
misspelt variable fails the spawn with the template's path instead of rendering empty.
Every ``{{ value }}`` is shell-quoted automatically (``shlex.quote``; names and numbers
come out unchanged). ``setup`` lines are admin shell and come out as they are, as does
the output of ``super()`` and blocks; the ``sh`` filter quotes explicitly, ``shjoin``
quotes and joins a list. The values are
those the catalog validated: nothing a user typed reaches the script otherwise.

Where the template comes from, first match wins: the partition's ``template:``, the
system's ``template:`` (paths on the hub host), hpcgate's built-in
``hpcgate/slurm-job.sh.j2``. An admin template may ``{% extends
"hpcgate/slurm-job.sh.j2" %}`` and replace its blocks ``resources``, ``options``,
``environment``, ``workdir``, ``setup``, ``launch``; other templates in its directory
can be included by name.

Variables (all always defined; see :data:`TEMPLATE_VARIABLES`):

==================  =======================================================================
``job_name``        ``hpcgate-<server name>`` (``hpcgate-default`` for the default server)
``system``          catalog name of the system
``partition``       Slurm partition (``--partition``)
``project``         project to charge (``--account``), or None when the system has none
``nodes``           number of nodes (``--nodes``)
``cpus``            CPUs for the lab (``--cpus-per-task``)
``memory``          memory in GiB (``--mem=<memory>G``)
``gpus``            GPUs (``--gres=gpu:<gpus>`` when above 0)
``runtime``         wall time in minutes (``--time``)
``user``            the JupyterHub user name
``account``         the user's account on the system
``server_name``     the server's name, ``""`` for the default server
``run_id``          unique id of this launch (names its files under ``~/.hpcgate/run``)
``env_file``        the environment file, relative to ``$HOME`` (read and removed first)
``connection_file`` the connection file relative to ``$HOME``, or None when not used
``workdir``         working directory: relative to ``$HOME``, or absolute
``setup``           list of shell lines: the system's ``setup``, then the partition's
``command``         argv of the server (``hpcgate-singleuser`` and its arguments)
==================  =======================================================================
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from ....catalog import LaunchRequest, System
from ..base import SubmitError
from ..login import safe_name

log = logging.getLogger("hpcgate.backends.slurm")

BUILTIN_TEMPLATE = "hpcgate/slurm-job.sh.j2"

#: name -> meaning of every variable a job template may use (the module docstring
#: documents the same, in a table for the README).
TEMPLATE_VARIABLES = {
    "job_name": "hpcgate-<server name>",
    "system": "catalog name of the system",
    "partition": "Slurm partition (--partition)",
    "project": "project to charge (--account), or None",
    "nodes": "number of nodes (--nodes)",
    "cpus": "CPUs for the lab (--cpus-per-task)",
    "memory": "memory in GiB (--mem=<memory>G)",
    "gpus": "GPUs (--gres=gpu:<gpus> when above 0)",
    "runtime": "wall time in minutes (--time)",
    "user": "the JupyterHub user name",
    "account": "the user's account on the system",
    "server_name": "the server's name, empty for the default server",
    "run_id": "unique id of this launch",
    "env_file": "environment file relative to $HOME",
    "connection_file": "connection file relative to $HOME, or None",
    "workdir": "working directory, relative to $HOME or absolute",
    "setup": "shell lines: the system's setup, then the partition's",
    "command": "argv of the server",
}


class ShellCode(Markup):
    """Text that goes into the job script as it is: admin shell or already quoted.

    A :class:`markupsafe.Markup` so that Jinja2's own "already safe" marking (the
    output of ``super()`` and of other blocks, ``|safe`` in an admin's template) also
    passes unquoted; HTML escaping never happens because :func:`_finalize` hands Jinja2
    only Markup.
    """


def _finalize(value: Any) -> Markup:
    """Every ``{{ value }}``: quoted for the shell unless it is already Markup."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises, naming the variable
    if isinstance(value, bool) or value is None:
        raise jinja2.TemplateError(
            f"a template printed {value!r}; test it with {{% if %}} instead of printing it"
        )
    if isinstance(value, int):
        return ShellCode(str(value))
    if isinstance(value, str):
        return ShellCode(shlex.quote(value))
    raise jinja2.TemplateError(
        f"a template printed a {type(value).__name__}; join lists with the shjoin filter"
    )


def _sh(value: Any) -> ShellCode:
    return ShellCode(shlex.quote(str(value)))


def _shjoin(values: Iterable[Any]) -> ShellCode:
    if isinstance(values, str):
        raise jinja2.TemplateError("shjoin takes a list, not a string; use the sh filter")
    return ShellCode(shlex.join(str(v) for v in values))


def _builtin_source(name: str) -> str | None:
    if name != BUILTIN_TEMPLATE.split("/", 1)[1]:
        return None
    return resources.files("hpcgate.data").joinpath(name).read_text("utf-8")


def template_environment(directory: str | None = None) -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment job templates render in.

    ``directory``: where an admin template lives, so it can include its neighbours.
    The built-in template is ``hpcgate/slurm-job.sh.j2`` in every environment.
    """
    loaders: list[jinja2.BaseLoader] = []
    if directory:
        loaders.append(jinja2.FileSystemLoader(directory))
    loaders.append(jinja2.PrefixLoader({"hpcgate": jinja2.FunctionLoader(_builtin_source)}))
    env = SandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        # on, so that Jinja2 marks block output (super()) as safe; _finalize quotes the rest
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    env.filters["sh"] = _sh
    env.filters["shjoin"] = _shjoin
    return env


def template_source(system_name: str, system: System, partition: str) -> tuple[str, str | None]:
    """``(config key, path)`` of the template a launch uses; path None: the built-in."""
    part = system.partitions.get(partition)
    if part is not None and part.template:
        return f"systems.{system_name}.partitions.{partition}.template", part.template
    if system.template:
        return f"systems.{system_name}.template", system.template
    return "built-in template", None


def template_values(
    request: LaunchRequest,
    *,
    user: str,
    account: str,
    server_name: str,
    run_id: str,
    workdir: str,
    command: Sequence[str],
    connection_file: bool,
) -> dict[str, Any]:
    """The template's variables (:data:`TEMPLATE_VARIABLES`) for one launch."""
    system = request.system_config
    safe = safe_name(server_name)
    return {
        "job_name": f"hpcgate-{safe}",
        "system": request.system,
        "partition": request.partition,
        "project": request.project,
        "nodes": request.nodes,
        "cpus": request.cpus,
        "memory": request.memory,
        "gpus": request.gpus,
        "runtime": request.runtime,
        "user": user,
        "account": account,
        "server_name": server_name,
        "run_id": run_id,
        "env_file": f".hpcgate/run/{run_id}.env",
        "connection_file": f".hpcgate/run/{run_id}.json" if connection_file else None,
        "workdir": workdir,
        "setup": [ShellCode(line) for line in [*system.setup, *request.partition_config.setup]],
        "command": list(command),
    }


def render_job_script(system_name: str, system: System, partition: str, values: dict[str, Any]) -> str:
    """The job script for ``values``; :class:`SubmitError` (naming the template) on failure.

    Admin errors (a missing file, a syntax error, an unknown variable) are logged with
    the config key and the path; the user reads that the admins must fix the template.
    """
    key, path = template_source(system_name, system, partition)
    try:
        if path is None:
            template = template_environment().get_template(BUILTIN_TEMPLATE)
        else:
            file = Path(path).expanduser()
            template = template_environment(str(file.parent)).get_template(file.name)
        script = template.render(values)
    except (jinja2.TemplateError, OSError) as exc:
        where = f"{key} ({path})" if path else key
        log.error("Cannot render the Slurm job template %s: %s: %s", where, type(exc).__name__, exc)
        raise SubmitError(
            f"The job template of {system_name} cannot be used ({where}: {exc}). "
            "Tell the hub's admins; they need to fix the template."
        ) from exc
    if not script.startswith("#!"):
        log.error("Slurm job template %s does not start with #! (sbatch needs an interpreter line)", key)
        raise SubmitError(
            f"The job template of {system_name} ({key}) does not start with an interpreter "
            "line (#!). Tell the hub's admins; they need to fix the template."
        )
    return script
