"""The sandbox's Slurm capacity option (load benchmarks declare more CPUs than exist)."""

from __future__ import annotations

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
