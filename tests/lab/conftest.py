"""The lab tests' fixtures live in labtools.py (importable by name from the tests)."""

from labtools import lab, other_user, upstream  # noqa: F401
