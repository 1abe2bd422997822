"""The spawn form: system -> partition -> project -> resources, from the user's offer.

The page is rendered server-side for the current choice (so it works without
JavaScript) and carries the whole offer as JSON; a small script re-renders the dependent
fields when the system or partition changes, with the limits beside each field. Every
catalog value is HTML-escaped; the JSON is escaped for a ``<script>`` element.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..catalog import RESOURCES, UNITS, Offer, PartitionOffer, SystemOffer

LABELS = {
    "nodes": "Nodes",
    "cpus": "CPUs per node",
    "memory": "Memory (GiB)",
    "gpus": "GPUs per node",
    "runtime": "Runtime (minutes)",
}

_SCRIPT = r"""
(function () {
  const root = document.getElementById("hpcgate-form");
  const offer = JSON.parse(document.getElementById("hpcgate-offer").textContent);
  const units = JSON.parse(root.dataset.units);
  const sysSel = root.querySelector("select[name=system]");
  const partSel = root.querySelector("select[name=partition]");
  const projSel = root.querySelector("select[name=project]");
  const projRow = root.querySelector(".hpcgate-project");
  const option = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; };
  const system = () => offer.systems.find(s => s.name === sysSel.value) || offer.systems[0];
  function fillPartitions() {
    const s = system(); const keep = partSel.value;
    partSel.replaceChildren(...s.partitions.map(p => option(p.name, p.description ? p.name + " - " + p.description : p.name)));
    if (s.partitions.some(p => p.name === keep)) partSel.value = keep;
    projSel.replaceChildren(...s.projects.map(p => option(p.name, p.description ? p.name + " - " + p.description : p.name)));
    projRow.hidden = s.projects.length === 0; projSel.disabled = s.projects.length === 0;
    fillLimits();
  }
  function fillLimits() {
    const p = system().partitions.find(p => p.name === partSel.value);
    if (!p) return;
    for (const [res, lim] of Object.entries(p.limits)) {
      const input = root.querySelector("input[name=" + res + "]");
      const hint = root.querySelector(".hpcgate-limit-" + res);
      input.min = lim.min; input.max = lim.max;
      const v = Number(input.value);
      if (input.value === "" || v < lim.min || v > lim.max) input.value = lim.default;
      input.closest(".form-group").hidden = lim.min === lim.max && lim.max === 0;
      hint.textContent = lim.min === lim.max ? "fixed at " + lim.max + units[res]
        : "from " + lim.min + " to " + lim.max + units[res] + ", default " + lim.default;
    }
  }
  sysSel.addEventListener("change", fillPartitions);
  partSel.addEventListener("change", fillLimits);
})();
"""


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</script>', no HTML comment openers)."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _options(items: list[tuple[str, str]], selected: str | None) -> str:
    out = []
    for name, description in items:
        label = f"{name} - {description}" if description else name
        sel = " selected" if name == selected else ""
        out.append(f'<option value="{html.escape(name)}"{sel}>{html.escape(label)}</option>')
    return "".join(out)


def _limit_text(res: str, lim: Any) -> str:
    unit = UNITS[res]
    if lim.min == lim.max:
        return f"fixed at {lim.max}{unit}"
    return f"from {lim.min} to {lim.max}{unit}, default {lim.default}"


def _choice(previous: dict[str, Any], key: str) -> str | None:
    value = previous.get(key)
    return value if isinstance(value, str) else None


def render_form(offer: Offer, previous: dict[str, Any], note: str = "") -> str:
    """HTML of the options form for ``offer``, preselecting ``previous`` choices."""
    if not offer.systems:
        return (
            '<div class="alert alert-warning" id="hpcgate-form">Your account may not launch on any '
            "system yet. Ask your centre's support to add you to a project group.</div>"
        )
    system: SystemOffer = offer.system(_choice(previous, "system") or "") or offer.system(
        offer.default_system or ""
    ) or offer.systems[0]
    partition: PartitionOffer = system.partition(_choice(previous, "partition") or "") or system.partitions[0]
    project = _choice(previous, "project")
    rows = [
        '<div class="form-group"><label for="hpcgate-system">System</label>'
        f'<select class="form-control" id="hpcgate-system" name="system">'
        f"{_options([(s.name, s.description) for s in offer.systems], system.name)}</select></div>",
        '<div class="form-group"><label for="hpcgate-partition">Partition</label>'
        f'<select class="form-control" id="hpcgate-partition" name="partition">'
        f"{_options([(p.name, p.description) for p in system.partitions], partition.name)}</select></div>",
        f'<div class="form-group hpcgate-project"{"" if system.projects else " hidden"}>'
        '<label for="hpcgate-project">Project (charged for the resources)</label>'
        f'<select class="form-control" id="hpcgate-project" name="project"{"" if system.projects else " disabled"}>'
        f"{_options(system.projects, project)}</select></div>",
    ]
    for res in RESOURCES:
        lim = partition.limits[res]
        value = previous.get(res)
        if not isinstance(value, int) or not lim.min <= value <= lim.max:
            value = lim.default
        hidden = " hidden" if lim.min == lim.max == 0 else ""
        rows.append(
            f'<div class="form-group"{hidden}><label for="hpcgate-{res}">{LABELS[res]}</label>'
            f'<input class="form-control" type="number" step="1" id="hpcgate-{res}" name="{res}" '
            f'min="{lim.min}" max="{lim.max}" value="{value}">'
            f'<small class="form-text text-muted hpcgate-limit-{res}">{html.escape(_limit_text(res, lim))}</small></div>'
        )
    if note:
        rows.append(f'<p class="text-muted">{html.escape(note)}</p>')
    units = html.escape(json.dumps(UNITS), quote=True)
    return (
        f'<div id="hpcgate-form" data-units="{units}">'
        + "".join(rows)
        + f'<script type="application/json" id="hpcgate-offer">{_script_json(offer.as_json())}</script>'
        + f"<script>{_SCRIPT}</script></div>"
    )
