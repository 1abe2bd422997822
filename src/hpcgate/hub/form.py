"""The spawn form: system -> partition -> project -> resources, from the user's offer.

The page is rendered server-side for the current choice (so it works without
JavaScript) and carries the whole offer as JSON; a small script re-renders the dependent
fields when the system or partition changes: the system's description, the partition's
limits, the GPU field only where the partition has GPUs, the project, the cost of the
launch in core-hours, the scheduler reservations the user may start in (only where
there are any for the partition and project), and (per system) the user's last choice
there. Every field says
what it is for. Every catalog value is HTML-escaped; the JSON is escaped for a
``<script>`` element. The form posts the same option names the REST API takes, and
both go through :meth:`Catalog.validate` (same checks, same sentences).
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from ..catalog import RESOURCES, UNITS, Offer, PartitionOffer, Range, SystemOffer, core_hours

LABELS = {
    "nodes": "Nodes",
    "cpus": "CPUs per node",
    "memory": "Memory per node (GiB)",
    "gpus": "GPUs per node",
    "runtime": "Runtime (minutes)",
}

#: What each field is for (shown under it).
HELP = {
    "system": "The machine your JupyterLab runs on. Your files there are the ones you see in the lab.",
    "partition": "A group of nodes with the same hardware and limits. Login-node partitions start at "
    "once; compute partitions may wait in the queue.",
    "project": "The compute budget charged for this session.",
    "reservation": "Nodes the centre set aside for you or your project for a time (a course, a deadline). "
    "In one, the session starts when the reservation begins, on its nodes, and must end before it ends. "
    "Leave it at 'No reservation' for the normal queue.",
    "nodes": "Whole nodes reserved for the session; more than one only helps code that runs across nodes (MPI, Dask).",
    "cpus": "CPU cores on each node for your kernels and apps.",
    "memory": "Memory on each node; a kernel that needs more is stopped by the system.",
    "gpus": "GPUs on each node.",
    "runtime": "The session ends after this time (the job's wall time); save your work before. "
    "The lab warns you 10 and 2 minutes before.",
}

_SCRIPT = r"""
(function () {
  const root = document.getElementById("hpcgate-form");
  const offer = JSON.parse(document.getElementById("hpcgate-offer").textContent);
  const remembered = JSON.parse(document.getElementById("hpcgate-remembered").textContent);
  const units = JSON.parse(root.dataset.units);
  const sysSel = root.querySelector("select[name=system]");
  const partSel = root.querySelector("select[name=partition]");
  const projSel = root.querySelector("select[name=project]");
  const projRow = root.querySelector(".hpcgate-project");
  const resSel = root.querySelector("select[name=reservation]");
  const resRow = root.querySelector(".hpcgate-reservation");
  const option = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; };
  const label = (x) => x.description ? x.name + " - " + x.description : x.name;
  const system = () => offer.systems.find(s => s.name === sysSel.value) || offer.systems[0];
  const partition = () => system().partitions.find(p => p.name === partSel.value);
  function fillReservations(wanted) {
    const s = system();
    const keep = wanted !== undefined ? wanted : resSel.value;
    const project = projSel.disabled ? null : projSel.value;
    const fits = (s.reservations || []).filter(r => (r.partition === null || r.partition === partSel.value)
      && (r.projects === null || (project !== null && r.projects.includes(project))));
    resSel.replaceChildren(option("", "No reservation (the normal queue)"),
      ...fits.map(r => option(r.name, r.name + " - " + r.when)));
    if (fits.some(r => r.name === keep)) resSel.value = keep;
    resRow.hidden = fits.length === 0; resSel.disabled = fits.length === 0;
  }
  function fillSystem(useRemembered) {
    const s = system();
    const last = useRemembered ? remembered[s.name] : null;
    const keep = last && last.partition ? last.partition : partSel.value;
    partSel.replaceChildren(...s.partitions.map(p => option(p.name, label(p))));
    if (s.partitions.some(p => p.name === keep)) partSel.value = keep;
    projSel.replaceChildren(...s.projects.map(p => option(p.name, label(p))));
    if (last && last.project && s.projects.some(p => p.name === last.project)) projSel.value = last.project;
    else if (s.default_project) projSel.value = s.default_project;
    projRow.hidden = s.projects.length === 0; projSel.disabled = s.projects.length === 0;
    root.querySelector(".hpcgate-system-description").textContent = s.description || "";
    const state = root.querySelector(".hpcgate-system-state");
    state.textContent = s.state ? "State: " + s.state : ""; state.hidden = !s.state;
    const note = root.querySelector(".hpcgate-remembered-note");
    note.hidden = !last;
    fillLimits(last);
    fillReservations(last && last.reservation ? last.reservation : "");
  }
  function limitText(res, lim) {
    return lim.min === lim.max ? "fixed at " + lim.max + units[res]
      : "from " + lim.min + " to " + lim.max + units[res] + ", default " + lim.default;
  }
  function fillLimits(last) {
    const p = partition();
    if (!p) return;
    root.querySelector(".hpcgate-partition-description").textContent = p.description || "";
    root.querySelector(".hpcgate-partition-limits").textContent = p.summary;
    for (const [res, lim] of Object.entries(p.limits)) {
      const input = root.querySelector("input[name=" + res + "]");
      const hint = root.querySelector(".hpcgate-limit-" + res);
      input.min = lim.min; input.max = lim.max;
      let v = Number(input.value);
      if (last && Number.isInteger(last[res])) v = last[res];
      input.value = (input.value === "" && !last) || v < lim.min || v > lim.max ? lim.default : v;
      const row = input.closest(".form-group");
      const hide = res === "gpus" ? !p.has_gpus : lim.min === lim.max && lim.max === 0;
      row.hidden = hide; input.disabled = hide;
      hint.textContent = limitText(res, lim);
    }
    cost();
  }
  function cost() {
    const n = (res) => Number(root.querySelector("input[name=" + res + "]").value) || 0;
    const nodes = n("nodes"), cpus = n("cpus"), runtime = n("runtime"), gpus = n("gpus");
    const hours = nodes * cpus * runtime / 60;
    const p = partition();
    let text = "This launch reserves " + nodes + " node" + (nodes === 1 ? "" : "s") + " \u00d7 " + cpus +
      " CPU" + (cpus === 1 ? "" : "s") + " for " + runtime + " min: up to " + (Math.round(hours * 100) / 100) + " core-hours";
    if (p && p.has_gpus && gpus > 0) text += " and " + (Math.round(nodes * gpus * runtime / 60 * 100) / 100) + " GPU-hours";
    if (!projSel.disabled && projSel.value) text += ", charged to project " + projSel.value;
    root.querySelector(".hpcgate-cost").textContent = text + ".";
  }
  sysSel.addEventListener("change", () => fillSystem(true));
  partSel.addEventListener("change", () => { fillLimits(null); fillReservations(); });
  projSel.addEventListener("change", () => { cost(); fillReservations(); });
  root.querySelectorAll("input[type=number]").forEach(i => i.addEventListener("input", cost));
  fillLimits(null);
})();
"""

_STYLE = """
#hpcgate-form .hpcgate-lead { margin-bottom: 1rem; }
#hpcgate-form .form-group { margin-bottom: .9rem; }
#hpcgate-form label { font-weight: 600; }
#hpcgate-form .hpcgate-help { display: block; color: var(--bs-secondary-color, #6c757d); }
#hpcgate-form .hpcgate-limit { font-variant-numeric: tabular-nums; }
#hpcgate-form .hpcgate-described { margin: .25rem 0 0; font-style: italic; }
#hpcgate-form .hpcgate-partition-limits { display: block; font-weight: 500; }
#hpcgate-form .hpcgate-resources { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 0 1.25rem; }
#hpcgate-form .hpcgate-cost { font-weight: 600; }
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


def _limit_text(res: str, lim: Range) -> str:
    unit = UNITS[res]
    if lim.min == lim.max:
        return f"fixed at {lim.max}{unit}"
    return f"from {lim.min} to {lim.max}{unit}, default {lim.default}"


def limits_summary(partition: PartitionOffer) -> str:
    """One line of what the partition allows at most (shown under its description)."""
    lim = partition.limits
    hours, minutes = divmod(lim["runtime"].max, 60)
    runtime = f"{hours} h" + (f" {minutes} min" if minutes else "") if hours else f"{minutes} min"
    parts = [
        f"up to {lim['nodes'].max} node{'' if lim['nodes'].max == 1 else 's'}",
        f"{lim['cpus'].max} CPUs and {lim['memory'].max} GiB per node",
    ]
    if partition.has_gpus:
        parts.append(f"{lim['gpus'].max} GPUs per node")
    parts.append(f"{runtime} per session")
    return "Allows " + ", ".join(parts) + "."


def _choice(previous: dict[str, Any], key: str) -> str | None:
    value = previous.get(key)
    return value if isinstance(value, str) else None


def _notices(offer: Offer) -> str:
    """The offer's sentences (withheld partitions, accounting outages) as one message line."""
    if not offer.notices:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in offer.notices)
    return f'<div class="alert alert-info hpcgate-notices"><ul class="mb-0">{items}</ul></div>'


def cost_sentence(nodes: int, cpus: int, gpus: int, runtime: int, project: str | None) -> str:
    """The form's cost line (the script writes the same words as fields change)."""
    text = (
        f"This launch reserves {nodes} node{'' if nodes == 1 else 's'} \u00d7 {cpus} CPU{'' if cpus == 1 else 's'} "
        f"for {runtime} min: up to {round(core_hours(nodes, cpus, runtime), 2):g} core-hours"
    )
    if gpus > 0:
        text += f" and {round(nodes * gpus * runtime / 60, 2):g} GPU-hours"
    if project:
        text += f", charged to project {project}"
    return text + "."


def _help(key: str) -> str:
    return f'<small class="form-text hpcgate-help" id="hpcgate-{key}-help">{html.escape(HELP[key])}</small>'


def _sessions_note(offer: Offer, system: SystemOffer, active: list[str]) -> str:
    """How many sessions the user has active, against the catalog's limits."""
    parts = [f"You have {len(active)} of at most {offer.sessions_per_user} sessions starting or running"]
    if system.sessions_per_user is not None:
        here = sum(1 for s in active if s == system.name)
        parts.append(f"{here} of at most {system.sessions_per_user} on {system.name}")
    full = len(active) >= offer.sessions_per_user
    cls = "alert alert-warning" if full else "text-muted"
    tail = " Stop one on your home page before you launch another." if full else ""
    return f'<p class="hpcgate-sessions {cls}">{html.escape("; ".join(parts) + "." + tail)}</p>'


def _reservation_row(system: SystemOffer, partition: str, project: str | None, chosen: str | None) -> str:
    """The reservation field: the system's reservations that fit the partition and
    project shown (the script keeps it in step); hidden where there are none."""
    if project not in {n for n, _ in system.projects}:
        project = system.projects[0][0] if system.projects else None
    fits = [
        r for r in system.reservations
        if (r.partition is None or r.partition == partition) and (r.allows_project(project) if project else not r.accounts)
    ]
    now = time.time()
    items = [("", "No reservation (the normal queue)")] + [(r.name, f"{r.name} - {r.when(now)}") for r in fits]
    options = "".join(
        f'<option value="{html.escape(name)}"{" selected" if name and name == chosen else ""}>{html.escape(text)}</option>'
        for name, text in items
    )
    off = "" if fits else " hidden"
    return (
        f'<div class="form-group hpcgate-reservation"{off}><label for="hpcgate-reservation">Reservation</label>'
        '<select class="form-select form-control" id="hpcgate-reservation" name="reservation" '
        f'aria-describedby="hpcgate-reservation-help"{"" if fits else " disabled"}>{options}</select>'
        f"{_help('reservation')}</div>"
    )


def _offer_json(offer: Offer) -> dict[str, Any]:
    """The offer for the script, each partition with its :func:`limits_summary`."""
    data = offer.as_json()
    for system, sdata in zip(offer.systems, data["systems"], strict=True):
        for partition, pdata in zip(system.partitions, sdata["partitions"], strict=True):
            pdata["summary"] = limits_summary(partition)
    return data


def render_form(
    offer: Offer,
    previous: dict[str, Any],
    note: str = "",
    remembered: dict[str, dict[str, Any]] | None = None,
    active: list[str] | None = None,
    session: str = "",
) -> str:
    """HTML of the options form for ``offer``, preselecting ``previous`` choices.

    ``remembered``: the user's last options per system (applied when the user picks
    that system); ``active``: the systems of the user's other active sessions (for the
    line on session limits); ``session``: the session's name ("" for the default one).
    """
    if not offer.systems:
        return (
            '<div class="alert alert-warning" id="hpcgate-form">Your account may not launch on any '
            "system yet. Ask your centre's support to add you to a project group.</div>" + _notices(offer)
        )
    remembered = remembered or {}
    active = active or []
    system: SystemOffer = offer.system(_choice(previous, "system") or "") or offer.system(
        offer.default_system or ""
    ) or offer.systems[0]
    partition: PartitionOffer = system.partition(_choice(previous, "partition") or "") or system.partitions[0]
    project = _choice(previous, "project") or system.default_project
    is_remembered = bool(previous) and remembered.get(system.name) == {
        k: v for k, v in previous.items() if k in remembered.get(system.name, {})
    }
    named = f"Session <strong>{html.escape(session)}</strong>: choose" if session else "Choose"
    rows = [
        f'<p class="hpcgate-lead">{named} where your JupyterLab runs and what it may use. '
        "The limits under each field are those of your projects on the chosen partition.</p>",
        _notices(offer),
        _sessions_note(offer, system, active),
        '<div class="form-group"><label for="hpcgate-system">System</label>'
        '<select class="form-select form-control" id="hpcgate-system" name="system" aria-describedby="hpcgate-system-help">'
        f"{_options([(s.name, s.description) for s in offer.systems], system.name)}</select>"
        f'<p class="hpcgate-described hpcgate-system-description">{html.escape(system.description)}</p>'
        # hook: the system's state (up, draining, maintenance) once other work fills it in
        f'<p class="hpcgate-system-state text-warning"{"" if system.state else " hidden"}>'
        f'{html.escape("State: " + system.state) if system.state else ""}</p>'
        f"{_help('system')}"
        f'<small class="form-text text-info hpcgate-remembered-note"{"" if is_remembered else " hidden"}>'
        "Filled in with your last choice on this system.</small></div>",
        '<div class="form-group"><label for="hpcgate-partition">Partition</label>'
        '<select class="form-select form-control" id="hpcgate-partition" name="partition" aria-describedby="hpcgate-partition-help">'
        f"{_options([(p.name, p.description) for p in system.partitions], partition.name)}</select>"
        f'<p class="hpcgate-described hpcgate-partition-description">{html.escape(partition.description)}</p>'
        f'<small class="form-text hpcgate-partition-limits">{html.escape(limits_summary(partition))}</small>'
        f"{_help('partition')}</div>",
        f'<div class="form-group hpcgate-project"{"" if system.projects else " hidden"}>'
        '<label for="hpcgate-project">Project</label>'
        f'<select class="form-select form-control" id="hpcgate-project" name="project" aria-describedby="hpcgate-project-help"'
        f'{"" if system.projects else " disabled"}>'
        f"{_options(system.projects, project)}</select>{_help('project')}</div>",
        _reservation_row(system, partition.name, project, _choice(previous, "reservation")),
        '<div class="hpcgate-resources">',
    ]
    values: dict[str, int] = {}
    for res in RESOURCES:
        lim = partition.limits[res]
        value = previous.get(res)
        if not isinstance(value, int) or not lim.min <= value <= lim.max:
            value = lim.default
        values[res] = value
        hidden = not partition.has_gpus if res == "gpus" else lim.min == lim.max == 0
        off = " hidden" if hidden else ""
        rows.append(
            f'<div class="form-group"{off}><label for="hpcgate-{res}">{LABELS[res]}</label>'
            f'<input class="form-control" type="number" step="1" id="hpcgate-{res}" name="{res}" '
            f'min="{lim.min}" max="{lim.max}" value="{value}"{" disabled" if hidden else ""} '
            f'aria-describedby="hpcgate-{res}-help">'
            f'<small class="form-text hpcgate-limit hpcgate-limit-{res}">{html.escape(_limit_text(res, lim))}</small>'
            f"{_help(res)}</div>"
        )
    rows.append("</div>")
    shown_project = project if project in {n for n, _ in system.projects} else (
        system.projects[0][0] if system.projects else None
    )
    cost = cost_sentence(
        values["nodes"], values["cpus"], values["gpus"] if partition.has_gpus else 0, values["runtime"], shown_project
    )
    rows.append(f'<p class="hpcgate-cost" aria-live="polite">{html.escape(cost)}</p>')
    if note:
        rows.append(f'<p class="text-muted">{html.escape(note)}</p>')
    units = html.escape(json.dumps(UNITS), quote=True)
    return (
        f"<style>{_STYLE}</style>"
        f'<div id="hpcgate-form" data-units="{units}">'
        + "".join(rows)
        + f'<script type="application/json" id="hpcgate-offer">{_script_json(_offer_json(offer))}</script>'
        + f'<script type="application/json" id="hpcgate-remembered">{_script_json(remembered)}</script>'
        + f"<script>{_SCRIPT}</script></div>"
    )
