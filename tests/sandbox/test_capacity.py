"""The sandbox's Slurm capacity option (load benchmarks declare more CPUs than exist)."""

from __future__ import annotations

import os
import subprocess

from harness.missing import unavailable
from hpcgate.sandbox import layout as L
from hpcgate.sandbox.slurm import slurm_conf_text


def node_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"NodeName={L.COMPUTE_HOST} "))


def test_the_default_node_is_what_the_tests_expect():
    line = node_line(slurm_conf_text(L.Layout()))
    assert f"CPUs={L.NODE_CPUS} " in line and f"RealMemory={L.NODE_MEMORY_MB} " in line


def test_a_layout_can_declare_capacity_for_200_one_cpu_jobs():
    text = slurm_conf_text(L.Layout(node_cpus=204, node_memory_mb=204 * 1024))
    assert "CPUs=204 " in node_line(text) and f"RealMemory={204 * 1024} " in node_line(text)
    # slurmd accepts a declaration above the machine's real CPUs only with this
    assert "SlurmdParameters=config_overrides" in text.splitlines()


def test_node_daemons_start_at_the_layouts_nice():
    # what the load benchmark uses to model nodes apart from the hub's cores; the bench
    # reads the running daemons' nice back from /proc and prints it
    argv = ["/usr/sbin/slurmd", "-N", "compute1"]
    assert L.Layout().node_argv(argv) == argv
    assert L.Layout(node_nice=10).node_argv(argv) == ["nice", "-n", "10", *argv]


def test_node_daemons_start_in_the_layouts_cpu_group():
    """The node cgroup: the command the layout builds joins it (with its weight) and
    becomes the daemon, whose children inherit the group (run for real here)."""
    argv = ["cat", "/proc/self/cgroup"]
    assert L.Layout(node_nice=5).node_argv(argv) == ["nice", "-n", "5", *argv]
    group = L.node_cgroup()
    if group is None or os.geteuid() != 0:
        unavailable(
            "no cgroup cpu controller to write to here (needs root and cgroup v1 cpu or v2 with cpu)",
            "CI runs as root on this machine kind, which mounts the cgroup v1 cpu controller",
        )
    directory, weight_file, weight = group
    existed = directory.exists()
    try:
        out = subprocess.run(L.Layout(node_cpu_shares=64).node_argv(argv), capture_output=True, text=True, check=True)
        assert f"/{L.NODE_CGROUP}" in out.stdout  # the daemon (here: cat) runs inside the group
        assert (directory / weight_file).read_text().strip() == str(weight(64))
    finally:
        if not existed:
            directory.rmdir()
