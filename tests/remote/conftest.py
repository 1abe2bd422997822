"""Fixtures of the remote tests beyond the root conftest's ``sshd``."""

import asyncio

import pytest

from harness.sshd import USERS
from tests.hub.backends.test_ssh import make_backend, spec_for


@pytest.fixture
async def lab(sshd, tmp_path):
    """A stand-in lab of USERS[0] started through the ssh backend: (host, port)."""
    backend, catalog = make_backend(sshd, tmp_path, ssh={"connection_file": True})
    handle = await backend.submit(spec_for(catalog, USERS[0]))
    for _ in range(100):
        found = await backend.read_connection_file(handle)
        if found:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(await backend.log_tail(handle))
    yield found
    await backend.cancel(handle)
    await backend.close()
