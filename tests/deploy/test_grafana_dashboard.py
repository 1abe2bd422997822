"""docs/grafana/hpcgate.json refers only to metrics that hpcgate and JupyterHub export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "hpcgate.json"
# a metric name in PromQL: an identifier not followed by "(" (a function) and not a label
NAME = re.compile(r"\b((?:hpcgate|jupyterhub)_[a-z0-9_]+)\b")


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can have, from its # TYPE lines (also families without samples)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("", "_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def test_dashboard_uses_only_exported_metrics():
    import jupyterhub.metrics  # noqa: F401 - JupyterHub's metrics, on the same /hub/metrics page

    from hpcgate.hub import metrics as hub_metrics
    from hpcgate.hub.runtime import HPCGate
    from hpcgate.lab.metrics import METRIC_NAMES as LAB_NAMES
    from hpcgate.lab.metrics import LabMetrics

    HPCGate.instance()  # registers the scrape-time collector (running servers, tunnels)
    hub = exported_names(generate_latest(REGISTRY).decode())
    lab = exported_names(LabMetrics(lambda: ["an-app"]).exposition().decode())
    # the modules' lists of names are what they export
    assert set(hub_metrics.METRIC_NAMES) <= hub
    assert set(LAB_NAMES) <= lab

    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used, "the dashboard queries no metric"
    unknown = used - hub - lab
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"
    # every hpcgate metric has a panel
    missing = {n for n in (*hub_metrics.METRIC_NAMES, *LAB_NAMES)} - {
        re.sub(r"_(bucket|count|sum)$", "", n) for n in used
    }
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "hpcgate" and dash["panels"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
