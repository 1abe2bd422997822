"""Kernels from environment modules, jupyterlmod, jupyter-resource-usage and a session's
energy, end to end: a real JupyterHub, the sandbox's sshd, munge, Slurm and Debian's Lmod.

The lab runs as a Slurm job on compute1 with the sandbox catalog's module kernels
(hpcgate.sandbox.modules); every kernel start goes through hub, tunnel and the
``hpcgate-modules`` provisioner, which loads the modules with the real Lmod on the node.
"""

from __future__ import annotations

import pytest

from harness.hub import Hub
from harness.sandbox import stop_hub_and_jobs
from hpcgate.sandbox.modules import BROKEN_MESSAGE, DEMO_VALUE
from tests.hub.slurmtools import run_code

pytestmark = pytest.mark.sandbox

USERS = {"alice": "hpcg-alice"}
OPTIONS = {"system": "cluster", "partition": "debug", "cpus": 2, "memory": 1, "runtime": 10}


@pytest.fixture(scope="module")
def lab(sandbox, slurm_catalog, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("modules-hub"), catalog=str(slurm_catalog),
              extra="c.HPCSpawner.start_timeout = 180").start()
    try:
        r = hub.spawn("alice", OPTIONS)
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("alice", timeout=180)
        yield hub
    finally:
        stop_hub_and_jobs(hub, sandbox, USERS)


def test_the_launcher_offers_the_systems_module_kernels(lab: Hub):
    specs = lab.get("/user/alice/api/kernelspecs").json()["kernelspecs"]
    assert specs["hpcgate-demo"]["spec"]["display_name"] == "Python (python-stack + hpcgate-demo)"
    assert "hpcgate-broken" in specs and "python3" in specs


def test_a_kernel_from_modules_runs_with_them_loaded_on_the_node(lab: Hub):
    out = run_code(lab, "alice", "import os, socket; print(os.environ.get('HPCGATE_DEMO_MODULE')); "
                   "print(os.environ.get('LOADEDMODULES')); print(socket.gethostname())", kernel="hpcgate-demo")
    value, loaded, _host = out.splitlines()
    assert value == DEMO_VALUE
    assert loaded == "python-stack/1.0:hpcgate-demo/1.0"
    # the lab's default kernel has no module loaded
    assert run_code(lab, "alice", "import os; print(os.environ.get('HPCGATE_DEMO_MODULE'))").strip() == "None"


def test_a_module_that_fails_shows_lmods_message_through_the_hub(lab: Hub):
    before = lab.get("/user/alice/api/kernels").json()
    r = lab.request("POST", "/user/alice/api/sessions", json={
        "path": "m.ipynb", "name": "m.ipynb", "type": "notebook", "kernel": {"name": "hpcgate-broken"}})
    assert r.status_code == 500, r.text
    assert BROKEN_MESSAGE in r.json()["message"]
    assert "Lmod has detected the following error" in r.json()["message"]
    assert lab.get("/user/alice/api/kernels").json() == before, "no dead kernel left behind"


def test_jupyterlmod_lists_and_loads_the_sandbox_modules(lab: Hub):
    avail = lab.get("/user/alice/module/modules")
    assert avail.status_code == 200, avail.text
    assert {"python-stack/1.0", "hpcgate-demo/1.0", "broken/1.0"} <= set(avail.json())
    r = lab.request("POST", "/user/alice/module", json={"modules": ["hpcgate-demo/1.0"]})
    assert r.status_code == 200, r.text
    assert "hpcgate-demo/1.0" in lab.get("/user/alice/module").json()
    lab.request("DELETE", "/user/alice/module", json={"modules": ["hpcgate-demo/1.0"]})
    assert "hpcgate-demo/1.0" not in lab.get("/user/alice/module").json()


def test_resource_usage_is_against_the_jobs_allocation(lab: Hub):
    metrics = lab.get("/user/alice/api/metrics/v1").json()
    # Slurm's figures on the node: 2 CPUs and 1 GiB (SLURM_CPUS_ON_NODE, SLURM_MEM_PER_NODE);
    # compute1 itself declares 4 CPUs and 4 GiB
    assert metrics["limits"]["cpu"]["cpu"] == 2
    assert metrics["limits"]["memory"]["rss"] == 1024 * 1024 * 1024
    assert metrics["rss"] > 0


def test_the_sessions_energy_is_an_estimate_here(lab: Hub, sandbox):
    # the sandbox's Slurm records no energy: no AcctGatherEnergyType plugin
    config = sandbox.run_in("login", ["scontrol", "show", "config"], timeout=30).stdout
    energy_plugin = [ln for ln in config.splitlines() if ln.startswith("AcctGatherEnergyType")]
    assert energy_plugin and energy_plugin[0].split("=", 1)[1].strip() in ("(null)", "acct_gather_energy/none"), energy_plugin
    session = lab.login("alice")
    energy = session.get(lab.url + "/hub/api/hpcgate/energy", timeout=10).json()["sessions"][""]
    assert energy["method"] == "estimate" and energy["running"] is True
    assert energy["energy_wh"] > 0 and energy["elapsed_s"] > 0
