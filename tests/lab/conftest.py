"""The lab tests' fixtures live in labtools.py (importable by name from the tests)."""

from tests.lab.labtools import lab, other_user, upstream  # noqa: F401
