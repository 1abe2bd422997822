// hpcgate's home page: one card per session, updated live without reloading.
// Data: GET <hub>/api/hpcgate/users/<name>/sessions (the user's own cookie, read:servers);
// actions through JupyterHub's REST API (start, stop, delete) and its progress stream.
// Every value from the server is written with textContent, never as HTML.
(function () {
  "use strict";
  const home = document.getElementById("hpcgate-home");
  if (!home) return;
  const user = home.dataset.user;
  const base = home.dataset.baseUrl; // "/hub/"
  const named = home.dataset.named === "true";
  const list = document.getElementById("hpcgate-sessions");
  const notice = document.getElementById("hpcgate-notice");
  const xsrf = (window.jhdata && window.jhdata.xsrf_token) || "";
  const u = encodeURIComponent(user);
  const progress = {}; // session name -> {source, message}
  let skew = 0; // hub clock minus browser clock, in seconds
  let sessions = [];
  let timer = null;

  const STATE_TEXT = {
    queued: "Queued", starting: "Starting", running: "Running",
    stopping: "Stopping", stopped: "Stopped", unknown: "Status unknown",
  };

  function serverPath(name) {
    return base + "api/users/" + u + (name ? "/servers/" + encodeURIComponent(name) : "/server");
  }

  async function api(method, path, body) {
    const init = { method, headers: { "X-XSRFToken": xsrf }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try { const data = await r.json(); message = data.message || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return r;
  }

  let noticeTimer = null;
  function say(text, kind) {
    notice.replaceChildren();
    clearTimeout(noticeTimer);
    if (!text) return;
    if (kind !== "danger" && kind !== "warning") noticeTimer = setTimeout(() => notice.replaceChildren(), 8000);
    const div = el("div", "alert alert-" + (kind || "info") + " alert-dismissible", text);
    const close = el("button", "btn-close");
    close.type = "button"; close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => notice.replaceChildren());
    div.appendChild(close);
    notice.appendChild(div);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function now() { return Date.now() / 1000 + skew; }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + " h " + String(m).padStart(2, "0") + " min";
    if (m >= 10) return m + " min";
    if (m) return m + " min " + String(s).padStart(2, "0") + " s";
    return s + " s";
  }

  function clock(epoch) {
    const d = new Date((epoch - skew) * 1000);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function resourcesText(r) {
    const parts = [];
    if (r.nodes !== undefined) parts.push(r.nodes + (r.nodes === 1 ? " node" : " nodes"));
    if (r.cpus !== undefined) parts.push(r.cpus + (r.cpus === 1 ? " CPU" : " CPUs") + (r.nodes > 1 ? "/node" : ""));
    if (r.memory !== undefined) parts.push(r.memory + " GiB");
    if (r.gpus) parts.push(r.gpus + (r.gpus === 1 ? " GPU" : " GPUs"));
    if (r.runtime !== undefined) parts.push(r.runtime + " min");
    return parts.join(" · ");
  }

  function row(dl, term, value, cls) {
    if (value === null || value === undefined || value === "") return;
    const dt = el("dt", null, term);
    const dd = el("dd", cls || null, value);
    dl.append(dt, dd);
    return dd;
  }

  function stateLine(s) {
    const p = progress[s.name];
    if (s.state === "queued") {
      let text = "Waiting in the queue" + (s.reason ? " (" + s.reason + ")" : "");
      if (s.expected_start) {
        const wait = s.expected_start - now();
        text += wait > 0 ? "; expected to start at " + clock(s.expected_start) + " (in " + duration(wait) + ")"
          : "; expected to start any moment";
      } else {
        text += "; the scheduler has not planned a start time yet";
      }
      return text + ".";
    }
    if (s.state === "starting") {
      return (p && p.message) || (s.node ? "Starting JupyterLab on " + s.node + "." : "Starting…");
    }
    if (s.state === "running") return "Running on " + (s.node || "its node") + ".";
    if (s.state === "stopping") return "Stopping…";
    if (s.state === "unknown") return "The system does not answer right now (" + (s.reason || "no reason given") + "); the session is kept.";
    return s.stop_reason || "Stopped. Its settings are kept.";
  }

  function button(text, cls, action, title) {
    const b = el("button", "btn btn-sm " + cls, text);
    b.type = "button";
    if (title) b.title = title;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await action(); } catch (e) { say(e.message, "danger"); }
      finally { b.disabled = false; refresh(); }
    });
    return b;
  }

  function link(text, cls, href) {
    const a = el("a", "btn btn-sm " + cls, text);
    a.href = href;
    return a;
  }

  function card(s) {
    const col = el("article", "card hpcgate-card hpcgate-state-" + s.state);
    col.dataset.session = s.name;
    const head = el("div", "card-header hpcgate-card-head");
    const title = el("h2", "h5 mb-0 hpcgate-card-title", s.name ? s.display_name : "Default session");
    const badge = el("span", "badge rounded-pill hpcgate-badge", STATE_TEXT[s.state]);
    head.append(title, badge);
    const body = el("div", "card-body");
    const where = el("p", "hpcgate-where mb-2");
    const sys = el("strong", null, s.system || "no system chosen yet");
    where.appendChild(sys);
    if (s.system_description) where.appendChild(el("span", "text-muted", " — " + s.system_description));
    body.appendChild(where);
    const dl = el("dl", "hpcgate-facts");
    row(dl, "Partition", s.partition);
    row(dl, "Project", s.project);
    row(dl, "Resources", resourcesText(s.resources || {}));
    if (s.core_hours !== null && s.core_hours !== undefined) row(dl, "Cost", "up to " + s.core_hours + " core-hours");
    row(dl, "Job", s.job_id);
    if (s.state === "stopped" && s.last_activity) row(dl, "Last used", new Date((s.last_activity - skew) * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }));
    if (s.state === "running" || s.state === "starting") row(dl, "Node", s.node);
    if (s.end_time && (s.state === "running" || s.state === "unknown")) {
      const dd = row(dl, "Time left", duration(s.end_time - now()), "hpcgate-time-left");
      dd.dataset.end = s.end_time;
    }
    if (s.energy) {
      const dd = row(dl, s.energy.running ? "Energy so far" : "Energy", s.energy.label, "hpcgate-energy");
      if (dd && s.energy.estimate) dd.title = "An estimate from the allocated CPUs and GPUs, the time and the catalog's power per device (docs/energy.md)";
    }
    body.appendChild(dl);
    const state = el("p", "hpcgate-state-line mb-0", stateLine(s));
    body.appendChild(state);
    if (s.end_time && s.started && s.state === "running") {
      const bar = el("div", "progress hpcgate-time-bar");
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-label", "Share of the session's time used");
      const inner = el("div", "progress-bar");
      bar.dataset.start = s.started; bar.dataset.end = s.end_time;
      bar.appendChild(inner);
      body.appendChild(bar);
    }
    const foot = el("div", "card-footer hpcgate-actions");
    const stopTarget = serverPath(s.name);
    if (s.state === "running" || s.state === "unknown") {
      const open = link("Open", "btn-primary hpcgate-open", s.url);
      open.target = "_blank"; open.rel = "noopener";
      foot.appendChild(open);
    }
    if (s.state === "queued" || s.state === "starting" || s.state === "running" || s.state === "unknown") {
      foot.appendChild(button(s.state === "running" || s.state === "unknown" ? "Stop" : "Cancel",
        "btn-outline-danger hpcgate-stop", async () => {
          await api("DELETE", stopTarget);
          say("Stopping " + (s.name || "your default session") + ".", "secondary");
        }));
    }
    if (s.state === "stopped") {
      const ready = s.options && s.options.system;
      if (ready) {
        foot.appendChild(button("Relaunch", "btn-primary hpcgate-relaunch", async () => {
          await api("POST", stopTarget); // no options: JupyterHub reuses this session's own
          say("Relaunching " + (s.name || "your default session") + " with the same settings.", "success");
          follow(s.name);
        }, "Start again with the same settings"));
      }
      foot.appendChild(link(ready ? "Edit" : "Start", (ready ? "btn-outline-secondary" : "btn-primary") + " hpcgate-edit",
        base + "spawn/" + u + (s.name ? "/" + encodeURIComponent(s.name) : "")));
      if (s.name) {
        foot.appendChild(button("Delete", "btn-outline-secondary hpcgate-delete", async () => {
          if (!window.confirm("Forget the session " + s.name + " and its settings?")) return;
          await api("DELETE", stopTarget, { remove: true });
          say("Session " + s.name + " deleted.", "secondary");
        }, "Forget this session and its settings"));
      }
    }
    col.append(head, body, foot);
    return col;
  }

  function follow(name) {
    if (progress[name] && progress[name].source) return;
    const source = new EventSource(serverPath(name) + "/progress");
    progress[name] = { source, message: "" };
    source.onmessage = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (data.message) progress[name].message = data.message.replace(/^\[\s*[0-9.]+ s\]\s*/, "");
      // a queued card keeps its own line (reason, expected start); a starting one shows the step
      const now = sessions.find((x) => x.name === name);
      const line = list.querySelector('[data-session="' + CSS.escape(name) + '"] .hpcgate-state-line');
      if (line && progress[name].message && now && now.state === "starting") line.textContent = progress[name].message;
      if (data.ready || data.failed) {
        source.close();
        progress[name].source = null;
        if (data.failed) say(data.message || "The session did not start.", "danger");
        refresh();
      }
    };
    source.onerror = () => { source.close(); progress[name].source = null; };
  }

  function tick() {
    list.querySelectorAll(".hpcgate-time-left").forEach((dd) => {
      const left = Number(dd.dataset.end) - now();
      dd.textContent = duration(left);
      dd.classList.toggle("text-danger", left < 600);
    });
    list.querySelectorAll(".hpcgate-time-bar").forEach((bar) => {
      const start = Number(bar.dataset.start), end = Number(bar.dataset.end);
      const used = Math.min(100, Math.max(0, (now() - start) / (end - start) * 100));
      bar.firstChild.style.width = used.toFixed(1) + "%";
      bar.setAttribute("aria-valuenow", Math.round(used));
    });
  }

  function render(data) {
    sessions = data.sessions;
    const rank = { running: 0, unknown: 0, starting: 1, queued: 1, stopping: 2, stopped: 3 };
    const cards = [...sessions]
      .sort((x, y) => rank[x.state] - rank[y.state] || x.name.localeCompare(y.name))
      .filter((s) => s.name || s.state !== "stopped" || (s.options && s.options.system))
      .map(card);
    if (!cards.length) {
      const empty = el("div", "hpcgate-empty card card-body text-center");
      empty.appendChild(el("p", "mb-2", "You have no sessions yet."));
      empty.appendChild(el("p", "text-muted mb-0", named
        ? "Give your first one a name above and press New session."
        : "Press Start a session above."));
      cards.push(empty);
    }
    list.replaceChildren(...cards);
    list.setAttribute("aria-busy", "false");
    const active = sessions.filter((s) => s.state !== "stopped").length;
    const limits = document.getElementById("hpcgate-limits");
    limits.textContent = data.sessions_per_user
      ? active + " of at most " + data.sessions_per_user + " sessions starting or running; " +
        sessions.filter((s) => s.name).length + " of " + data.remembered_per_user + " named sessions kept."
      : "";
    for (const s of sessions) if (s.state === "starting" || s.state === "queued") follow(s.name);
    tick();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const r = await fetch(base + "api/hpcgate/users/" + u + "/sessions", { credentials: "same-origin", headers: { "X-XSRFToken": xsrf } });
      if (!r.ok) throw new Error("The hub answered " + r.status + " for your sessions.");
      const data = await r.json();
      const serverNow = data.sessions.length ? data.sessions[0].now : null;
      if (serverNow) skew = serverNow - Date.now() / 1000;
      render(data);
    } catch (e) {
      say(e.message + " Retrying…", "warning");
    }
    const busy = sessions.some((s) => s.state === "starting" || s.state === "queued" || s.state === "stopping");
    timer = setTimeout(refresh, busy ? 2000 : 10000);
  }

  function freeName() {
    const taken = new Set(sessions.map((s) => s.name));
    for (let i = 1; ; i++) if (!taken.has("session-" + i)) return "session-" + i;
  }

  const form = document.getElementById("hpcgate-new");
  if (form) {
    const input = document.getElementById("hpcgate-new-name");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = (input.value || input.placeholder).trim().toLowerCase();
      // JupyterHub's rule for server names (a "safe slug")
      if (!/^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$/.test(name) || name.includes("--")) {
        say("A session name has 1 to 30 lower-case letters, digits and single hyphens, starts with a letter " +
            "and ends with a letter or digit (for example gpu-run).", "warning");
        return;
      }
      if (sessions.some((s) => s.name === name)) {
        say("You already have a session called " + name + ": relaunch or edit it, or choose another name.", "warning");
        return;
      }
      window.location.href = base + "spawn/" + u + "/" + encodeURIComponent(name);
    });
  }

  setInterval(tick, 1000);
  refresh().then(() => {
    if (form) document.getElementById("hpcgate-new-name").placeholder = freeName();
  });
})();
