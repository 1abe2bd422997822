"""The sandbox tests use the shared session fixture from tests/sandbox_fixtures.py."""

from sandbox_fixtures import sandbox  # noqa: F401  (tests/ is on sys.path: tests/conftest.py)
