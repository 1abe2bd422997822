"""Catalog parsing, offers and validation of launch options (hostile values included)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from hpcgate.catalog import (
    CatalogError,
    CatalogStore,
    LaunchError,
    UserInfo,
    default_catalog,
    json_schema_text,
    parse_catalog,
)

SITE = """
systems:
  jureca:
    kind: slurm
    description: JURECA DC
    hosts: [login1.example.org, login2.example.org]
    ssh:
      identity: {mode: user_key, key_path: "/etc/hpcgate/keys/{account}"}
    partitions:
      dc-cpu:
        limits:
          nodes: {min: 1, default: 1, max: 8}
          cpus: {min: 1, default: 4, max: 128}
          memory: {min: 1, default: 8, max: 512}
          gpus: {min: 0, default: 0, max: 0}
          runtime: {min: 10, default: 60, max: 1440}
      dc-gpu:
        limits:
          nodes: {min: 1, default: 1, max: 4}
          cpus: {min: 1, default: 8, max: 64}
          memory: {min: 1, default: 16, max: 512}
          gpus: {min: 1, default: 1, max: 4}
          runtime: {min: 10, default: 60, max: 720}
  local:
    kind: local
    partitions:
      only: {}
projects:
  chem: {description: Chemistry}
  ml: {description: Machine learning}
groups:
  everyone:
    all_users: true
    grants:
      - system: local
  chemists:
    grants:
      - system: jureca
        partitions: [dc-cpu]
        projects: [chem]
        caps: {nodes: 2, runtime: 120}
  ml-team:
    grants:
      - system: jureca
        projects: [ml]
        caps: {nodes: 4}
defaults:
  system: jureca
"""


@pytest.fixture
def catalog():
    return parse_catalog(SITE, "site.yaml")


def test_default_catalog_offers_this_machine_with_two_partitions():
    offer = default_catalog().offer(UserInfo("anyone"))
    assert [s.name for s in offer.systems] == ["local"]
    assert offer.systems[0].kind == "local"
    assert len(offer.systems[0].partitions) == 2


def test_offer_is_the_union_of_the_users_groups(catalog):
    alone = catalog.offer(UserInfo("u"))
    assert [s.name for s in alone.systems] == ["local"]
    assert alone.default_system == "local"  # jureca not offered, default falls back
    chem = catalog.offer(UserInfo("u", frozenset({"chemists"})))
    jureca = chem.system("jureca")
    assert [p.name for p in jureca.partitions] == ["dc-cpu"]
    assert jureca.partition("dc-cpu").limits["nodes"].max == 2
    assert jureca.partition("dc-cpu").limits["runtime"].max == 120
    assert [n for n, _ in jureca.projects] == ["chem"]
    both = catalog.offer(UserInfo("u", frozenset({"chemists", "ml-team"})))
    jureca = both.system("jureca")
    assert [p.name for p in jureca.partitions] == ["dc-cpu", "dc-gpu"]
    # the most generous cap wins: ml-team caps nodes at 4 and runtime not at all
    assert jureca.partition("dc-cpu").limits["nodes"].max == 4
    assert jureca.partition("dc-cpu").limits["runtime"].max == 1440
    assert [n for n, _ in jureca.projects] == ["chem", "ml"]


def test_offer_json_shape(catalog):
    data = catalog.offer(UserInfo("u", frozenset({"chemists"}))).as_json()
    json.dumps(data)
    system = data["systems"][0]
    assert set(system) == {
        "name", "kind", "description", "partitions", "projects", "sessions_per_user", "state", "reservations",
        "default_project", "notices",
    }
    assert set(data) == {"systems", "default_system", "sessions_per_user", "withheld", "notices"}
    assert set(system["partitions"][0]) == {"name", "description", "limits", "has_gpus"}
    assert system["partitions"][0]["limits"]["cpus"] == {"min": 1, "default": 4, "max": 128}


def test_validate_fills_defaults_and_parses_form_strings(catalog):
    user = UserInfo("u", frozenset({"chemists"}))
    req = catalog.validate(user, {"system": ["jureca"], "cpus": ["16"], "memory": "32"})
    assert (req.system, req.partition, req.project) == ("jureca", "dc-cpu", "chem")
    assert (req.nodes, req.cpus, req.memory, req.gpus, req.runtime) == (1, 16, 32, 0, 60)
    assert req.as_options()["cpus"] == 16


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"cpus": "4; rm -rf ~"}, "whole number"),
        ({"cpus": "$(reboot)"}, "whole number"),
        ({"cpus": "`id`"}, "whole number"),
        ({"partition": "dc-cpu && curl evil"}, "not a valid name"),
        ({"partition": "{{ 7*7 }}"}, "not a valid name"),
        ({"project": "{% for x in y %}"}, "not a valid name"),
        ({"system": "../../etc/passwd"}, "not a valid name"),
        ({"partition": "dc\u2011cpu"}, "not a valid name"),  # unicode hyphen
        ({"partition": "ｄｃ-cpu"}, "not a valid name"),  # full-width letters
        ({"cpus": "٣"}, "whole number"),  # arabic-indic digit
        ({"cpus": -1}, "from 1 to 128"),
        ({"cpus": "-1"}, "whole number"),
        ({"cpus": 10**100}, "from 1 to 128"),
        ({"cpus": "9" * 50}, "whole number"),
        ({"cpus": 1.5}, "whole number"),
        ({"cpus": 16.0}, "whole number"),  # taken exactly as sent or refused, never rounded
        ({"cpus": " 16"}, "spaces or line breaks around it"),
        ({"memory": "32 "}, "spaces or line breaks around it"),
        ({"cpus": "16\n"}, "spaces or line breaks around it"),
        ({"cpus": ["\t16"]}, "spaces or line breaks around it"),
        ({"partition": " dc-cpu"}, "spaces or line breaks around it"),
        ({"partition": "dc-cpu\n"}, "spaces or line breaks around it"),
        ({"project": "chem\r\n"}, "spaces or line breaks around it"),
        ({"system": "jureca "}, "spaces or line breaks around it"),
        ({"cpus": "1 6"}, "whole number"),
        ({"cpus": "+16"}, "whole number"),
        ({"cpus": "0x10"}, "whole number"),
        ({"cpus": "16e0"}, "whole number"),
        ({"cpus": True}, "whole number"),
        ({"cpus": None, "memory": [1, 2]}, "exactly one value"),
        ({"cpus": {"$gt": 1}}, "whole number"),
        ({"nodes": 3}, "from 1 to 2"),
        ({"partition": "dc-gpu"}, "may not use partition"),
        ({"project": "ml"}, "may not charge project"),
        ({"system": "summit"}, "may not launch on system"),
        ({"image": "x"}, "Unknown option"),
        ({"__class__": "x"}, "Unknown option"),
    ],
)
def test_validate_rejects_hostile_and_disallowed_values(catalog, options, fragment):
    user = UserInfo("u", frozenset({"chemists"}))
    with pytest.raises(LaunchError) as info:
        catalog.validate(user, {"system": "jureca", **options})
    message = str(info.value)
    assert fragment in message
    assert message.endswith(".")
    assert len(message) < 300


def test_project_required_where_the_user_has_several(catalog):
    user = UserInfo("u", frozenset({"chemists", "ml-team"}))
    with pytest.raises(LaunchError, match="Choose a project on jureca"):
        catalog.validate(user, {"system": "jureca"})
    assert catalog.validate(user, {"system": "jureca", "project": "ml"}).project == "ml"


def test_system_without_projects_refuses_one(catalog):
    with pytest.raises(LaunchError, match="takes no project"):
        catalog.validate(UserInfo("u"), {"system": "local", "project": "chem"})


def test_user_without_any_grant_gets_a_sentence():
    empty = parse_catalog("systems: {l: {kind: local, partitions: {p: {}}}}")
    with pytest.raises(LaunchError, match="support"):
        empty.validate(UserInfo("u"), {})


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("systems: [", "not valid YAML"),
        ("- a list", "must be a mapping"),
        ("systems: {x: {kind: pbs, partitions: {p: {}}}}", "systems.x.kind"),
        ("systems: {x: {kind: local, partitions: {}}}", "at least one partition"),
        ("systems: {x: {kind: slurm, partitions: {p: {}}}}", "needs hosts"),
        ("systems: {'bad name': {kind: local, partitions: {p: {}}}}", "systems.bad name"),
        (
            "systems: {x: {kind: local, partitions: {p: {limits: {cpus: {min: 2, default: 1, max: 4}}}}}}",
            "systems.x.partitions.p.limits.cpus",
        ),
        ("systems: {x: {kind: local, partitions: {p: {}}, colour: red}}", "systems.x.colour"),
        (
            "systems: {x: {kind: local, partitions: {p: {}}}}\ngroups: {g: {grants: [{system: y}]}}",
            "groups.g.grants.0.system: unknown system 'y'",
        ),
        (
            "systems: {x: {kind: local, partitions: {p: {}}}}\ngroups: {g: {grants: [{system: x, partitions: [q]}]}}",
            "has no partition 'q'",
        ),
    ],
)
def test_broken_catalog_errors_name_file_key_and_problem(text, fragment):
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "/etc/hpcgate/catalog.yaml")
    assert str(info.value).startswith("/etc/hpcgate/catalog.yaml:")
    assert fragment in str(info.value)


APPS = """
apps:
  nest-desktop:
    command: nest-desktop start -h 127.0.0.1 -p {port}
    title: NEST Desktop
    setup: ["module load NEST-Desktop"]
  ray:
    command: ray start --head --block --dashboard-port {port}
"""


def test_apps_go_to_every_system_and_systems_replace_or_withdraw_them():
    text = SITE.replace(
        "    ssh:\n",
        "    apps:\n      ray: null\n      nest-desktop: {command: 'nest-desktop-jsc --port {port}'}\n    ssh:\n",
        1,
    ) + APPS
    catalog = parse_catalog(text)
    assert catalog.apps_for("local") == {
        "nest-desktop": {"command": "nest-desktop start -h 127.0.0.1 -p {port}", "title": "NEST Desktop",
                         "setup": ["module load NEST-Desktop"]},
        "ray": {"command": "ray start --head --block --dashboard-port {port}"},
    }
    assert catalog.apps_for("jureca") == {"nest-desktop": {"command": "nest-desktop-jsc --port {port}"}}
    request = catalog.validate(UserInfo("u"), {"system": "local"})
    assert set(request.apps) == {"nest-desktop", "ray"}
    assert "apps beside the lab: nest-desktop, ray" in catalog.describe()


@pytest.mark.parametrize(
    "apps, fragment",
    [
        ("apps: {x: {command: 'run {secret}'}}", "app 'x': template '{secret}' names {secret}"),
        ("apps: {x: {command: ''}}", "app 'x': a generic app needs a command"),
        ("apps: {x: {command: 'a \"b'}}", "cannot be split into words"),
        ("apps: {x: {command: run, setup: 'module load x'}}", "setup must be a list of shell lines"),
        ("apps: {lab: {command: run}}", "app name 'lab' is not allowed"),
        ("apps: {x: {command: run, isolate_network: maybe}}", "isolate_network must be true, false or 'auto'"),
        ("apps: {x: {command: run, restart: sometimes}}", "restart must be one of"),
    ],
)
def test_broken_apps_name_the_app_and_what_is_wrong(apps, fragment):
    with pytest.raises(CatalogError) as info:
        parse_catalog("systems: {x: {kind: local, partitions: {p: {}}}}\n" + apps, "c.yaml")
    assert str(info.value).startswith("c.yaml: apps: ") and fragment in str(info.value)
    system_level = {"systems": {"x": {"kind": "local", "partitions": {"p": {}}, **yaml.safe_load(apps)}}}
    with pytest.raises(CatalogError) as info:
        parse_catalog(yaml.safe_dump(system_level), "c.yaml")
    assert str(info.value).startswith("c.yaml: systems.x.apps: ") and fragment in str(info.value)


def test_store_reloads_changes_and_keeps_last_good_on_error(tmp_path: Path, caplog):
    path = tmp_path / "catalog.yaml"
    path.write_text(SITE)
    store = CatalogStore(path, check_interval=0)
    assert set(store.get().systems) == {"jureca", "local"}
    path.write_text(SITE.replace("JURECA DC", "JURECA-DC renamed"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.get().systems["jureca"].description == "JURECA-DC renamed"
    path.write_text("systems: [broken")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert store.get().systems["jureca"].description == "JURECA-DC renamed"
    assert "not valid YAML" in store.last_error
    assert "Keeping the last good catalog" in caplog.text


def test_store_logs_reloads_through_the_logger_it_is_given(tmp_path: Path):
    """The hub hands its own logger (timestamp and level on every line); a good reload
    is logged too, not only a broken one."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    hub_log = logging.getLogger("test-hub-log")
    hub_log.addHandler(Keep())
    hub_log.setLevel(logging.INFO)
    path = tmp_path / "catalog.yaml"
    path.write_text(SITE)
    store = CatalogStore(path, check_interval=0, logger=hub_log)
    path.write_text(SITE.replace("JURECA DC", "JURECA-DC renamed"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    store.get()
    path.write_text("systems: [broken")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    store.get()
    seen = [(r.levelname, r.getMessage()) for r in records]
    assert seen[0][0] == "INFO" and seen[0][1].startswith(f"Reloaded catalog {path}: 2 system(s)"), seen
    assert seen[1][0] == "ERROR" and "Keeping the last good catalog" in seen[1][1], seen


def test_shipped_json_schema_is_current():
    shipped = Path(__file__).resolve().parents[2] / "src/hpcgate/data/catalog.schema.json"
    assert shipped.read_text() == json_schema_text(), "run `hpcgate schema > src/hpcgate/data/catalog.schema.json`"


def test_kernels_from_modules_in_the_catalog():
    from hpcgate.catalog import parse_catalog as parse

    base = """
systems:
  s:
    kind: local
    kernels:
      ml: {display_name: "ML stack", modules: [python/3.11, torch/2.3]}
    partitions: {p: {}}
groups: {all: {all_users: true, grants: [{system: s}]}}
"""
    catalog = parse(base)
    request = catalog.validate(UserInfo("ada"), {})
    assert request.kernels["ml"]["modules"] == ["python/3.11", "torch/2.3"]
    assert request.kernels["ml"]["argv"][-1] == "{connection_file}"
    assert "kernels from modules: ml (python/3.11 torch/2.3)" in catalog.describe()
    with pytest.raises(CatalogError, match="kernels.ml.modules.0"):
        parse(base.replace("python/3.11", "python 3.11"))
    with pytest.raises(CatalogError, match="connection_file"):
        parse(base.replace('modules: [python/3.11, torch/2.3]', 'modules: [a], argv: [python3]'))
