"""The Slurm tests' fixtures live in slurmtools.py (importable by name from the tests)."""

from slurmtools import slurm_catalog  # noqa: F401
