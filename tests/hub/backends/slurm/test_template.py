"""The Slurm job template and the backend's scripts, without a cluster."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from hpcgate.catalog import Catalog, CatalogModel, UserInfo
from hpcgate.hub.backends.base import SubmitError
from hpcgate.hub.backends.slurm import backend as slurm_backend
from hpcgate.hub.backends.slurm import template as slurm_template


def catalog(**system_overrides) -> Catalog:
    system = {
        "kind": "slurm",
        "hosts": ["login1"],
        "ssh": {"identity": {"mode": "user_key", "key_path": "/keys/{account}"}},
        "setup": ["module load python/3.11"],
        "partitions": {
            "debug": {
                "limits": {
                    "cpus": {"min": 1, "default": 2, "max": 8},
                    "memory": {"min": 1, "default": 4, "max": 16},
                    "gpus": {"min": 0, "default": 0, "max": 2},
                },
                "setup": ["export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"],
            }
        },
        **system_overrides,
    }
    data = {
        "systems": {"hpc": system},
        "projects": {"proj1": {}},
        "groups": {"all": {"all_users": True, "grants": [{"system": "hpc", "projects": ["proj1"]}]}},
    }
    return Catalog(CatalogModel.model_validate(data))


def render(cat: Catalog, options=None, **kw) -> str:
    request = cat.validate(UserInfo("alice"), {"system": "hpc", **(options or {})})
    values = slurm_template.template_values(
        request,
        user=kw.get("user", "alice"),
        account="alice",
        server_name=kw.get("server_name", ""),
        run_id="default-0123456789ab",
        workdir=kw.get("workdir", "."),
        command=kw.get("command", ["hpcgate-singleuser", "--debug"]),
        connection_file=kw.get("connection_file", False),
    )
    return slurm_template.render_job_script("hpc", request.system_config, request.partition, values)


def sbatch_options(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_resources_map_to_sbatch_options():
    script = render(catalog(), {"cpus": 4, "memory": 8, "gpus": 1, "runtime": 30})
    assert script.startswith("#!/bin/bash -l\n#SBATCH ")
    options = sbatch_options(script)
    for wanted in (
        "--partition=debug",
        "--account=proj1",
        "--nodes=1",
        "--cpus-per-task=4",
        "--mem=8G",
        "--gres=gpu:1",
        "--time=30",
        "--no-requeue",
    ):
        assert wanted in options, (wanted, options)
    # no gres line without GPUs
    assert not any(o.startswith("--gres") for o in sbatch_options(render(catalog(), {"gpus": 0})))


def test_setup_lines_run_in_order_before_the_server():
    script = render(catalog())
    system = script.index("module load python/3.11")
    partition = script.index("export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK")
    launch = script.index("exec hpcgate-singleuser --debug")
    envfile = script.index('. "$envfile"')
    assert envfile < system < partition < launch


def test_values_are_shell_quoted_and_the_script_is_valid_shell():
    hostile = "x'; touch /tmp/pwned; echo '$(id)`id`"
    script = render(catalog(), user=hostile, command=["hpcgate-singleuser", hostile, "a b"], workdir="dir with space")
    assert f"exec hpcgate-singleuser {shlex.quote(hostile)} 'a b'" in script
    assert "cd 'dir with space'" in script
    # bash parses it (no syntax error from any value)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_token_is_not_in_the_script():
    script = render(catalog())
    assert "JUPYTERHUB_API_TOKEN" not in script
    assert '"$HOME"/.hpcgate/run/default-0123456789ab.env' in script
    assert 'rm -f "$envfile"' in script


def test_connection_file_is_exported_when_enabled():
    assert "HPCGATE_CONNECTION_FILE" not in render(catalog())
    script = render(catalog(), connection_file=True)
    assert 'HPCGATE_CONNECTION_FILE="$HOME"/.hpcgate/run/default-0123456789ab.json' in script


def test_every_documented_variable_is_given_and_documented():
    request = catalog().validate(UserInfo("alice"), {"system": "hpc"})
    values = slurm_template.template_values(
        request, user="a", account="a", server_name="", run_id="r", workdir=".", command=["x"], connection_file=False
    )
    assert set(values) == set(slurm_template.TEMPLATE_VARIABLES)
    for name in slurm_template.TEMPLATE_VARIABLES:
        assert f"``{name}``" in slurm_template.__doc__, name


def test_partition_template_overrides_the_system_template(tmp_path):
    system_tpl = tmp_path / "system.sh.j2"
    system_tpl.write_text("#!/bin/sh\n# system template {{ partition }}\nexec {{ command | shjoin }}\n")
    part_tpl = tmp_path / "part.sh.j2"
    part_tpl.write_text(
        '{% extends "hpcgate/slurm-job.sh.j2" %}'
        "{% block options %}{{ super() }}#SBATCH --constraint=fast\n{% endblock %}"
    )
    cat = catalog(template=str(system_tpl))
    assert "# system template debug" in render(cat)
    data = cat.model.model_dump()
    data["systems"]["hpc"]["partitions"]["debug"]["template"] = str(part_tpl)
    script = render(Catalog(CatalogModel.model_validate(data)))
    assert "--constraint=fast" in sbatch_options(script)
    assert "--partition=debug" in sbatch_options(script)


@pytest.mark.parametrize(
    "body, needle",
    [
        ("#!/bin/sh\n{{ partiton }}\n", "partiton"),  # StrictUndefined: a typo fails
        ("#!/bin/sh\n{{ command }}\n", "shjoin"),  # a list is never printed raw
        ("#!/bin/sh\n{{ ''.__class__.__mro__ }}\n", "unsafe"),  # sandboxed
        ("#!/bin/sh\n{% if %}\n", "template.sh.j2"),  # syntax error names the file
        ("echo no interpreter line\n", "#!"),
    ],
)
def test_broken_templates_fail_with_the_config_key(tmp_path, body, needle):
    path = tmp_path / "template.sh.j2"
    path.write_text(body)
    with pytest.raises(SubmitError) as err:
        render(catalog(template=str(path)))
    message = str(err.value)
    assert "systems.hpc.template" in message
    assert "admins" in message
    assert needle in message or needle == "template.sh.j2" and str(path) in message


def test_missing_template_file(tmp_path):
    with pytest.raises(SubmitError, match="systems.hpc.template"):
        render(catalog(template=str(tmp_path / "nope.j2")))


def test_submit_script_keeps_values_out_of_the_command_line():
    # the scripts are constants: values arrive as "$1"... and stdin only
    for script in (slurm_backend.SUBMIT_SCRIPT, slurm_backend.CANCEL_SCRIPT):
        assert not re.search(r"\{[a-z_]+\}", script)
    assert "sbatch --parsable" in slurm_backend.SUBMIT_SCRIPT and '< "$script"' in slurm_backend.SUBMIT_SCRIPT
