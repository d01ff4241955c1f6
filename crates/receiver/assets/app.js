// Sandglass status page: the hosts table (/) and a host's page
// (/hosts/NAME), drawn from /api/... and redrawn every few seconds with
// fetch(), never by reloading. Every text a host, agent or plugin chose is
// put in with textContent, never parsed as HTML.
"use strict";
(function () {
  const REFRESH_MS = 10000;
  const main = document.getElementById("main");
  let timer = null;

  // An element with attributes (`on...` as listeners) and children.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const k in attrs || {}) {
      const v = attrs[k];
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function badge(status) {
    const s = status || "none";
    return el("span", { class: "badge s-" + s, text: status || "–" });
  }

  function age(nowMs, thenMs) {
    if (!thenMs) return "never";
    const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
    if (s < 120) return s + "s ago";
    if (s < 7200) return Math.round(s / 60) + "m ago";
    if (s < 172800) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }

  function when(ms) { return new Date(ms).toLocaleString(); }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // GET or POST the API; a 401 sends the browser to the login form.
  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    init.credentials = "same-origin";
    const response = await fetch(path, init);
    if (response.status === 401) { location.href = "/login"; throw new Error("log in first"); }
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function stamp() {
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // Run `load` now and every REFRESH_MS; errors show in the banner.
  function every(load) {
    const run = async () => {
      try { await load(); showError(""); stamp(); } catch (e) { showError(e.message); }
    };
    clearInterval(timer);
    timer = setInterval(run, REFRESH_MS);
    return run();
  }

  // ---- the hosts table ----------------------------------------------------
  const STATUSES = ["UNREACHABLE", "PROBLEM", "PENDING", "OK"];

  function hostsPage() {
    const params = new URLSearchParams(location.search);
    const state = {
      status: params.get("status") || "", name: params.get("name") || "",
      group: params.get("group") || "", page: Number(params.get("page") || 1),
    };
    const tabs = el("div", { class: "tabs" });
    const name = el("input", { type: "search", placeholder: "Host name contains…", value: state.name, id: "filter-name" });
    const group = el("input", { type: "text", placeholder: "Group", value: state.group, id: "filter-group", size: 12 });
    const body = el("tbody");
    const pager = el("div", { class: "pager" });
    const table = el("table", { id: "hosts" },
      el("thead", {}, el("tr", {}, ["Status", "Host", "Since", "Why", "Groups"].map(h => el("th", { text: h })))), body);
    main.replaceChildren(
      el("div", { class: "toolbar" }, tabs, el("span", { class: "spacer" }), name, group),
      el("div", { class: "card table-card" }, table), pager);
    document.getElementById("crumbs").textContent = "Hosts";

    let typing = null;
    const changed = () => { state.page = 1; clearTimeout(typing); typing = setTimeout(reload, 250); };
    name.addEventListener("input", () => { state.name = name.value.trim(); changed(); });
    group.addEventListener("input", () => { state.group = group.value.trim(); changed(); });

    function query() {
      const q = new URLSearchParams();
      for (const k of ["status", "name", "group"]) if (state[k]) q.set(k, state[k]);
      if (state.page > 1) q.set("page", state.page);
      return q.toString();
    }

    async function load() {
      const q = query();
      history.replaceState(null, "", q ? "/?" + q : "/");
      const data = await api("/api/hosts?" + q);
      const total = Object.values(data.counts).reduce((a, b) => a + b, 0);
      tabs.replaceChildren(...[["", "All", total]].concat(STATUSES.map(s => [s, s, data.counts[s] || 0]))
        .map(([value, label, n]) => el("button", {
          class: "tab" + (state.status === value ? " active" : ""), "data-status": value,
          onclick: () => { state.status = value; state.page = 1; reload(); },
        }, label, el("span", { class: "n", text: String(n) }))));
      const now = Date.now();
      body.replaceChildren(...data.hosts.map(h => el("tr", { class: "host-row" },
        el("td", {}, badge(h.status), h.acknowledged ? el("span", { class: "muted", title: "acknowledged", text: " ✓ack" }) : null),
        el("td", {}, el("a", { href: "/hosts/" + encodeURIComponent(h.name), class: "host-link", text: h.name })),
        el("td", { class: "nowrap", title: when(h.since_ms), text: age(now, h.since_ms) }),
        el("td", { class: "reason", text: h.reason }),
        el("td", { class: "muted", text: h.groups.join(", ") }))));
      if (!data.hosts.length) body.appendChild(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No host matches." })));
      pager.replaceChildren(
        el("span", { class: "muted", text: data.total + " hosts · page " + data.page + " of " + data.pages }),
        el("button", { disabled: data.page <= 1, onclick: () => { state.page--; reload(); }, text: "‹ Previous" }),
        el("button", { disabled: data.page >= data.pages, onclick: () => { state.page++; reload(); }, text: "Next ›" }));
      // For scripts/bench-web.sh: when the table first showed data.
      if (!performance.getEntriesByName("hosts-drawn").length) performance.mark("hosts-drawn");
    }
    const reload = () => every(load);
    return reload();
  }

  // ---- one host -----------------------------------------------------------
  const RANGES = [["1h", 3600e3], ["1d", 86400e3], ["7d", 7 * 86400e3]];

  function hostPage(host) {
    document.getElementById("crumbs").replaceChildren(el("a", { href: "/", text: "Hosts" }), " / ", host);
    document.title = host + " — Sandglass";
    const head = el("div", { class: "card", id: "host-head" });
    const actions = el("div", { class: "card", id: "host-actions" });
    const triggers = el("div", { class: "card", id: "host-triggers" });
    const services = el("div", { class: "card table-card", id: "host-services" });
    const plotCard = el("div", { class: "card", id: "plot-card" });
    const events = el("div", { class: "card table-card", id: "host-events" });
    main.replaceChildren(head, el("div", { class: "grid" }, actions, triggers), services, plotCard, events);
    const plot = plotPanel(plotCard, host);
    const buttons = actionsPanel(actions, host, () => every(load));
    let page = null;

    async function load() {
      page = await api("/api/hosts/" + encodeURIComponent(host));
      drawHead(head, page);
      buttons.update(page);
      drawTriggers(triggers, page);
      drawServices(services, page, plot.show);
      drawEvents(events, page);
      plot.offer(page);
      await plot.refresh();
    }
    return every(load);
  }

  function drawHead(box, h) {
    box.replaceChildren(
      el("h1", {}, badge(h.status), el("span", { id: "host-name", text: h.name })),
      el("div", { class: "reason", text: h.reason }),
      el("div", { class: "facts" },
        el("span", { title: when(h.since_ms), text: h.status + " since " + age(h.now_ms, h.since_ms) }),
        el("span", { text: h.connected ? "connected from " + (h.peer || "?") : "not connected" }),
        h.agent_version ? el("span", { text: "agent " + h.agent_version }) : null,
        h.groups.length ? el("span", { text: "groups: " + h.groups.join(", ") }) : null,
        h.lost ? el("span", { class: "error", text: h.lost.reports + " reports lost: " + h.lost.reason }) : null));
  }

  // The buttons are built once (a refresh must not wipe a comment being
  // typed); `update` redraws what the host's state changes.
  function actionsPanel(box, host, reload) {
    const comment = el("input", { type: "text", placeholder: "Comment", id: "ack-comment", size: 22 });
    const length = el("select", { id: "maint-for" }, ["1h", "4h", "1d", "7d"].map(d => el("option", { value: d, text: d })));
    const note = el("div", { class: "note", id: "action-note" });
    const list = el("div", {});
    const act = (path, body, done) => async () => {
      try { const r = await api(path, body()); note.textContent = done(r); await reload(); }
      catch (e) { note.textContent = e.message; }
    };
    const ack = el("button", {
      class: "primary", id: "ack-button",
      onclick: act("/api/ack", () => ({ host: host, comment: comment.value || "from the status page" }),
        r => "acknowledged #" + r.id + ": no notifications until it recovers"),
    }, "Acknowledge problem");
    box.replaceChildren(el("h2", { text: "Actions" }),
      el("div", { class: "actions" }, comment, ack),
      el("div", { class: "actions maint" }, el("span", { class: "muted", text: "Maintenance for" }), length,
        el("button", {
          id: "maint-button",
          onclick: act("/api/maintenance", () => ({ host: host, for: length.value, comment: comment.value }),
            r => "maintenance #" + r.id + " until " + when(r.until_ms)),
        }, "Start maintenance")),
      list, note);
    function update(h) {
      const problem = h.status === "PROBLEM" || h.status === "UNREACHABLE";
      ack.disabled = !problem;
      ack.title = problem ? "No notifications about this problem until it recovers" : "Nothing to acknowledge";
      list.replaceChildren(
        ...h.acks.map(a => el("div", { class: "note", text: "Acknowledged #" + a.id + (a.service ? " (" + a.service + ")" : "") +
          " " + age(h.now_ms, a.time_ms) + (a.comment ? ": " + a.comment : "") })),
        ...h.maintenance.map(w => el("div", { class: "note" },
          "Maintenance #" + w.id + (w.group ? " (group " + w.group + ")" : "") + ": " + when(w.from_ms) + " – " + when(w.until_ms) + " ",
          el("button", { onclick: act("/api/maintenance/" + w.id + "/end", () => ({}), () => "maintenance #" + w.id + " ended"), text: "End" }))));
    }
    return { update: update };
  }

  function drawTriggers(box, h) {
    box.replaceChildren(el("h2", { text: "Active triggers" }));
    if (!h.triggers.length) { box.appendChild(el("div", { class: "muted", text: "None firing." })); return; }
    for (const t of h.triggers) {
      box.appendChild(el("div", { class: "trigger" }, badge(t.severity), " ",
        el("b", { text: t.service + " / " + t.trigger }), " ",
        el("span", { class: "muted", text: "since " + age(h.now_ms, t.since_ms) }),
        el("div", { class: "reason", text: t.message })));
    }
  }

  function sampleText(s) {
    const labels = s.labels.map(([k, v]) => k + "=" + v).join(",");
    return [s.name + (labels ? "{" + labels + "}" : ""), SandglassPlot.number(s.value) + (s.unit ? " " + s.unit : "")];
  }

  function drawServices(box, h, show) {
    const rows = h.services.map(s => el("tr", { class: "service-row" },
      el("td", {}, el("b", { text: s.name }), el("div", { class: "muted", text: s.plugin })),
      el("td", {}, badge(s.late ? "LATE" : s.level), s.late ? el("div", { class: "note", text: "late: " + s.late }) : null),
      el("td", { class: "reason", text: s.text || "" }),
      el("td", { class: "nowrap", title: s.last_ms ? when(s.last_ms) : "", text: age(h.now_ms, s.last_ms) }),
      el("td", {}, el("div", { class: "chips" }, s.values.map(v => {
        const [name, value] = sampleText(v);
        return el("span", { class: "chip", title: "plot " + name, onclick: () => show(s.name, v.name) },
          name + " ", el("b", { text: value }));
      })))));
    box.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, ["Service", "Level", "Text", "Last report", "Latest values (click to plot)"].map(t => el("th", { text: t })))),
      el("tbody", {}, rows)));
  }

  function drawEvents(box, h) {
    const rows = h.events.map(e => el("tr", {},
      el("td", { class: "nowrap", title: when(e.time_ms), text: age(h.now_ms, e.time_ms) }),
      el("td", { text: e.service || "(host)" }),
      el("td", { class: "nowrap" }, badge(e.old), " → ", badge(e.new)),
      el("td", { class: "reason", text: e.reason })));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No events yet." })));
    box.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, ["When", "Service", "Change", "Why"].map(t => el("th", { text: t })))),
      el("tbody", {}, rows)));
  }

  // The plot: a metric chosen from the host's services, over a range; the
  // server aggregates to the plot's width in pixels.
  function plotPanel(card, host) {
    const choice = el("select", { id: "plot-metric" });
    const ranges = el("div", { class: "tabs" });
    const from = el("input", { type: "datetime-local", id: "plot-from" });
    const until = el("input", { type: "datetime-local", id: "plot-until" });
    const box = el("div", { class: "plot", id: "plot" });
    const legend = el("div", { class: "legend" });
    const note = el("span", { class: "muted", id: "plot-note" });
    let range = "1h", custom = null, wanted = null;
    card.replaceChildren(el("h2", { text: "Plot" }),
      el("div", { class: "plot-head" }, choice, ranges, from, until,
        el("button", { onclick: applyCustom, text: "Apply" }),
        note),
      box, legend);
    choice.addEventListener("change", () => { wanted = choice.value; refresh().catch(e => showError(e.message)); });
    function applyCustom() {
      const span = [new Date(from.value).getTime(), new Date(until.value).getTime()];
      if (!(span[0] < span[1])) { note.textContent = "give a start before the end"; return; }
      custom = span; range = "custom"; tabs(); refresh().catch(e => showError(e.message));
    }
    function tabs() {
      ranges.replaceChildren(...RANGES.map(([name]) => el("button", {
        class: "tab" + (range === name ? " active" : ""), "data-range": name,
        onclick: () => { range = name; custom = null; tabs(); refresh().catch(e => showError(e.message)); }, text: name,
      })));
    }
    tabs();
    // The metrics the host's services report, as options.
    function offer(page) {
      const options = [];
      for (const s of page.services) {
        for (const name of new Set(s.values.map(v => v.name))) options.push(s.name + "/" + name);
      }
      if (!wanted) wanted = options.find(o => o.startsWith("cpu/")) || options[0] || null;
      if (choice.options.length !== options.length) {
        choice.replaceChildren(...options.map(o => el("option", { value: o, text: o })));
      }
      if (wanted) choice.value = wanted;
    }
    async function refresh() {
      if (!wanted) { note.textContent = "no metric reported yet"; return; }
      const [service, metric] = [wanted.slice(0, wanted.indexOf("/")), wanted.slice(wanted.indexOf("/") + 1)];
      const q = new URLSearchParams({ host: host, service: service, metric: metric, width: String(Math.max(100, box.clientWidth - 72)) });
      const iso = ms => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
      if (custom) { q.set("since", iso(custom[0])); q.set("until", iso(custom[1])); }
      else q.set("since", range);
      const data = await api("/api/series?" + q);
      SandglassPlot.draw(box, data);
      SandglassPlot.legend(legend, data);
      const n = data.series.reduce((a, s) => a + s.points.length, 0);
      note.textContent = n + " points, one per " + Math.round(data.step_ms / 1000) + "s (" + data.agg + ")" + (data.unit ? ", " + data.unit : "");
    }
    return {
      offer: offer, refresh: refresh,
      show: (service, metric) => { wanted = service + "/" + metric; choice.value = wanted; refresh().catch(e => showError(e.message)); card.scrollIntoView({ behavior: "smooth" }); },
    };
  }

  const path = location.pathname;
  if (path.startsWith("/hosts/")) hostPage(decodeURIComponent(path.slice("/hosts/".length)));
  else hostsPage();
})();
