"""Fixtures for the app recipes: a real ``jupyter server`` with hpcgate.lab and the
installed recipes and jupyter-server-proxy plugins (see ``apptools.start_lab``)."""

from __future__ import annotations

import pytest

from tests.lab.apps.apptools import start_lab, stop_lab


@pytest.fixture(scope="session")
def lab_apps(tmp_path_factory):
    lab = start_lab(tmp_path_factory.mktemp("apps-lab"))
    yield lab
    stop_lab(lab)
