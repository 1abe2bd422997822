"""Session limits and cost in the catalog, squeue's times, and the form's new parts."""

from __future__ import annotations

import re

import pytest

from hpcgate.catalog import CatalogError, LaunchError, UserInfo, default_catalog, parse_catalog
from hpcgate.hub.backends.base import JobState
from hpcgate.hub.backends.slurm import parse as slurm
from hpcgate.hub.form import cost_sentence, render_form

SITE = """
systems:
  login:
    kind: local
    sessions_per_user: 1
    partitions: {interactive: {}}
  hpc:
    kind: local
    partitions:
      cpu: {}
      gpu:
        limits:
          gpus: {min: 1, default: 1, max: 4}
          cpus: {min: 1, default: 8, max: 64}
          runtime: {min: 10, default: 60, max: 720}
sessions: {per_user: 3, remembered: 8}
groups: {all: {all_users: true, grants: [{system: login}, {system: hpc}]}}
"""


@pytest.fixture
def catalog():
    return parse_catalog(SITE)


def test_session_limits_per_user_and_per_system(catalog):
    catalog.check_sessions("login", [])
    catalog.check_sessions("hpc", ["login", "hpc"])
    with pytest.raises(LaunchError, match=r"You have 1 session\(s\) starting or running on login, the most it allows per user \(1\)\. Stop one there"):
        catalog.check_sessions("login", ["login"])
    with pytest.raises(LaunchError, match=r"You have 3 session\(s\) starting or running, the most you may have at once \(3\)"):
        catalog.check_sessions("hpc", ["login", "hpc", "hpc"])


def test_session_limits_defaults_and_order():
    model = default_catalog().model
    assert (model.sessions.per_user, model.sessions.remembered) == (4, 10)
    with pytest.raises(CatalogError, match=r"sessions: remembered \(2\) must be at least per_user \(3\)"):
        parse_catalog(SITE.replace("remembered: 8", "remembered: 2"))
    with pytest.raises(CatalogError, match="systems.login.sessions_per_user"):
        parse_catalog(SITE.replace("sessions_per_user: 1", "sessions_per_user: 0"))


def test_offer_carries_limits_gpus_and_hooks(catalog):
    offer = catalog.offer(UserInfo("u"))
    data = offer.as_json()
    assert data["sessions_per_user"] == 3
    login, hpc = data["systems"]
    assert login["sessions_per_user"] == 1 and hpc["sessions_per_user"] is None
    assert [p["has_gpus"] for p in hpc["partitions"]] == [False, True]
    assert login["state"] is None and login["reservations"] == []


def test_core_hours_of_a_request(catalog):
    req = catalog.validate(UserInfo("u"), {"system": "hpc", "partition": "gpu", "cpus": 16, "runtime": 90})
    assert req.core_hours == 24.0
    assert cost_sentence(2, 16, 1, 90, "chem") == (
        "This launch reserves 2 nodes \u00d7 16 CPUs for 90 min: up to 48 core-hours and 3 GPU-hours, "
        "charged to project chem."
    )


def test_form_hides_gpus_without_gpus_and_explains_fields(catalog):
    offer = catalog.offer(UserInfo("u"))
    page = render_form(offer, {"system": "hpc", "partition": "cpu"}, active=["hpc"], session="big")
    gpu_row = re.search(r'<div class="form-group"( hidden)?><label for="hpcgate-gpus">', page)
    assert gpu_row and gpu_row.group(1) == " hidden"
    assert 'name="gpus" min="0" max="0" value="0" disabled' in page
    assert "Session <strong>big</strong>" in page
    assert "You have 1 of at most 3 sessions starting or running." in page
    for field in ("system", "partition", "project", "nodes", "cpus", "memory", "gpus", "runtime"):
        assert f'id="hpcgate-{field}-help"' in page
    page = render_form(offer, {"system": "hpc", "partition": "gpu"})
    assert re.search(r'<div class="form-group"><label for="hpcgate-gpus">', page)
    assert "up to 8 core-hours and 1 GPU-hours" in page


def test_form_at_the_limit_says_so(catalog):
    page = render_form(catalog.offer(UserInfo("u")), {"system": "login"}, active=["login", "hpc", "hpc"])
    assert "alert alert-warning" in page and "Stop one on your home page" in page
    assert "1 of at most 1 on login" in page


def test_form_remembers_per_system_escaped():
    offer = default_catalog().offer(UserInfo("u"))
    remembered = {"local": {"system": "local", "partition": "long", "memory": 5, "project": "</script>"}}
    page = render_form(offer, remembered["local"], remembered=remembered)
    blob = re.search(r'id="hpcgate-remembered">(.*?)</script>', page, re.S).group(1)
    assert "</script>" not in blob and "\\u003c/script\\u003e" in blob
    assert "Filled in with your last choice on this system." in page
    assert 'hpcgate-remembered-note" hidden' not in page


def test_parse_squeue_with_start_and_end_times():
    out = (
        "21|PENDING|1767200000|1767203600|Resources||0|\n"
        "22|PENDING|N/A|N/A|Priority||0|\n"
        "23|RUNNING|1767190000|1767193600|None|node7|0|\n"
        "24|PENDING|0|0|Reason|with|bars||0|\n"
    )
    got = slurm.parse_squeue(out)
    assert got["21"].state is JobState.PENDING and got["21"].reason == "Resources"
    assert got["21"].start_time == 1767200000 and got["21"].end_time == 1767203600
    assert got["22"].start_time is None and got["22"].reason == "Priority"
    assert got["23"].node == "node7" and got["23"].end_time == 1767193600
    assert got["24"].reason == "Reason|with|bars" and got["24"].start_time is None
    # the older field list (no times) still parses
    assert slurm.parse_squeue("7|PENDING|Resources||0|\n")["7"].reason == "Resources"
    assert slurm.SQUEUE_ENV == ["env", "SLURM_TIME_FORMAT=%s"]


def test_form_shows_a_systems_state_where_other_work_sets_it(catalog):
    import dataclasses

    offer = catalog.offer(UserInfo("u"))
    assert 'hpcgate-system-state text-warning" hidden' in render_form(offer, {})
    draining = dataclasses.replace(offer.systems[0], state="<draining>")
    page = render_form(dataclasses.replace(offer, systems=[draining, *offer.systems[1:]]), {})
    assert "State: &lt;draining&gt;</p>" in page


def test_check_names_the_session_limits(catalog):
    assert "sessions per user: 3 at once, 8 kept; login: 1 at once" in catalog.describe()


def test_partition_limits_summary(catalog):
    from hpcgate.hub.form import limits_summary

    hpc = catalog.offer(UserInfo("u")).system("hpc")
    assert limits_summary(hpc.partition("gpu")) == (
        "Allows up to 1 node, 64 CPUs and 1 GiB per node, 4 GPUs per node, 12 h per session."
    )
    assert "GPUs" not in limits_summary(hpc.partition("cpu"))
    page = render_form(catalog.offer(UserInfo("u")), {"system": "hpc", "partition": "gpu"})
    assert "12 h per session.</small>" in page and '"summary":"Allows up to 1 node' in page


async def test_a_lab_without_a_hub_has_no_session(monkeypatch):
    from tornado import web

    from hpcgate.lab.session import _HubSession

    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(web.HTTPError) as err:
        await _HubSession().get()
    assert err.value.status_code == 404 and "not started by a hub" in err.value.log_message


async def test_a_lab_whose_hub_does_not_answer_says_so(monkeypatch):
    from tornado import web

    from hpcgate.lab.session import _HubSession
    from hpcgate.net import free_port

    monkeypatch.setenv("JUPYTERHUB_API_URL", f"http://127.0.0.1:{free_port()}/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-a-real-token")
    with pytest.raises(web.HTTPError) as err:
        await _HubSession().get()
    assert err.value.status_code == 502 and "try again later" in err.value.log_message
