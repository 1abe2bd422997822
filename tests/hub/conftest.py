"""The Slurm tests' fixtures live in slurmtools.py (importable by name from the tests)."""

from tests.hub.slurmtools import slurm_catalog  # noqa: F401
