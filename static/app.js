// sigsync page: the All Signals table, the health panel and a signal's detail.
// Plain JS, no build step. Every value from the API reaches the DOM through textContent or an
// attribute set one by one: never innerHTML (raw payloads come from the internet).
"use strict";

(() => {
  const POLL_MS = 5000;
  // The zone every time is shown in: `--display-tz`, named by the server in index.html.
  // (The server accepts only zones a browser knows; one this browser does not know falls back to
  // New York, with a console error, rather than leaving the page blank.)
  const TZ = (() => {
    const name = document.querySelector('meta[name="sigsync-display-tz"]')?.content;
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: name });
      return name || "America/New_York";
    } catch (e) {
      console.error(`display zone ${name} unknown to this browser: times shown in New York`);
      return "America/New_York";
    }
  })();
  const HTF_KEYS = ["daily", "h4", "h1", "m15", "m5", "m1"];
  const FILTERS = ["status", "direction", "session", "symbol", "since", "until", "q"];
  const TOKEN = new URLSearchParams(location.search).get("token");
  const LWC = () => window.LightweightCharts;

  // ---------------------------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  // el("td", {class: "num", title: "..."}, "text", node, ...): text children become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else if (k === "dataset") Object.assign(node.dataset, v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // ---------------------------------------------------------------------------------------------
  // Formatting: times in the display zone with the zone shown (EST/EDT), numbers as a desk reads
  // them
  // ---------------------------------------------------------------------------------------------
  const zoneParts = new Intl.DateTimeFormat("en-US", {
    timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short",
  });

  function shown(iso, withSeconds = true) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const p = {};
    for (const part of zoneParts.formatToParts(d)) p[part.type] = part.value;
    const time = withSeconds ? `${p.hour}:${p.minute}:${p.second}` : `${p.hour}:${p.minute}`;
    return `${p.year}-${p.month}-${p.day} ${time} ${p.timeZoneName}`;
  }

  function shownShort(seconds) {                 // chart axis labels
    const p = {};
    for (const part of zoneParts.formatToParts(new Date(seconds * 1000))) p[part.type] = part.value;
    return { date: `${p.month}-${p.day}`, time: `${p.hour}:${p.minute}`, zone: p.timeZoneName };
  }

  function timeEl(iso, withSeconds = true) {
    if (!iso) return el("span", { class: "nil" }, "—");
    return el("time", { datetime: iso, title: `${iso} (UTC)` }, shown(iso, withSeconds));
  }

  function ago(iso, nowIso) {
    if (!iso) return "";
    const secs = Math.round((new Date(nowIso || Date.now()) - new Date(iso)) / 1000);
    if (!Number.isFinite(secs)) return "";
    if (secs < 0) return "";
    if (secs < 90) return `${secs} s ago`;
    if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
    if (secs < 172800) return `${Math.round(secs / 3600)} h ago`;
    return `${Math.round(secs / 86400)} days ago`;
  }

  function paren(text) {
    return text ? ` (${text})` : "";
  }

  function price(v) {
    if (v === null || v === undefined) return null;
    return Number(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 5 });
  }

  function rValue(v) {
    if (v === null || v === undefined) return null;
    return Number(v).toFixed(2);
  }

  function numCell(text, cls) {
    if (text === null) return el("td", { class: "num nil" }, "—");
    return el("td", { class: cls ? `num ${cls}` : "num" }, text);
  }

  function scoreText(score) {
    if (score === null || score === undefined) return "–";
    return Number.isInteger(score) ? String(score) : Number(score).toFixed(1);
  }

  function healthClass(score) {
    if (score === null || score === undefined) return "";
    return score >= 90 ? "h-good" : score >= 70 ? "h-mid" : "h-bad";
  }

  function valueText(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function prettyBody(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (e) {
      return String(text);
    }
  }

  // Alerts whose event_timestamp is the triangle's time (SPEC 1.4), not the bar they report.
  const TRIANGLE_STAMPED = /^(ENTRY|BE_TRIGGERED|EXIT_[A-Z]+)$/;

  const STATUS_CLASSES = new Set(["PENDING", "ACTIVE", "EXITED", "CANCELLED"]);
  // The break-even leg: "BE" once it has triggered (its stop is now the entry), "BE✓" once it
  // was stopped after triggering. An EXIT_SL before any trigger also stops the leg (SPEC §2),
  // but then it never armed: no BE mark, or a stop-out would read as a break-even exit.
  // A status no event said but a pass inferred (an exit from a price past the stop, a
  // cancellation by alternation) carries "inferred", so it never reads as the indicator's news.
  const INFERRED_STATUS = {
    EXITED: "inferred: no EXIT arrived; a price sample past the stop says the trade is over " +
      "(how sure: the detail's fields and audit)",
    CANCELLED: "inferred: no CANCELLED arrived; an opposite signal on the same market came " +
      "before confirmation (how sure: the detail's fields and audit)",
  };
  function statusBadge(status, s) {
    const cls = STATUS_CLASSES.has(status) ? `status st-${status}` : "status";
    const out = [el("span", { class: cls }, status || "?")];
    if (s.status_source === "inferred") {
      out.push(el("span", { class: "inferred", title: INFERRED_STATUS[status] || "inferred" },
        "inferred"));
    }
    const armed = Boolean(s.be_triggered_at || s.exit_be_at || (s.no_be_mfe ?? 0) >= 1.0);
    if (s.be_state === "TRIGGERED") {
      out.push(el("span", { class: "be", title: "break-even leg: triggered" }, "BE"));
    } else if (s.be_state === "STOPPED" && armed) {
      out.push(el("span", { class: "be", title: "break-even leg: stopped at the entry " +
        "after it triggered" }, "BE✓"));
    }
    return out;
  }

  function dirText(direction) {
    if (direction === "Bullish") return el("span", { class: "dir-Bullish" }, "▲ Long");
    if (direction === "Bearish") return el("span", { class: "dir-Bearish" }, "▼ Short");
    return el("span", { class: "nil" }, direction || "—");
  }

  // HTF alignment: ▲ bullish, ▼ bearish, – neutral (or any other word), · missing. The words
  // as the direction field accepts them (SPEC 1.4), in any case: Bullish, BULLISH, Long...
  const HTF_UP = new Set(["bullish", "bull", "long"]);
  const HTF_DOWN = new Set(["bearish", "bear", "short"]);
  function htfGlyphs(htf) {
    const wrap = el("span", { class: "htf" });
    const words = [];
    for (const key of HTF_KEYS) {
      const v = htf && typeof htf === "object" ? htf[key] : null;
      let glyph = "·", cls = "none";
      const word = typeof v === "string" ? v.trim().toLowerCase() : "";
      if (HTF_UP.has(word)) { glyph = "▲"; cls = "up"; }
      else if (HTF_DOWN.has(word)) { glyph = "▼"; cls = "down"; }
      else if (v !== null && v !== undefined && v !== "") { glyph = "–"; cls = "flat"; }
      wrap.append(el("span", { class: cls }, glyph));
      words.push(`${key} ${v === null || v === undefined || v === "" ? "missing" : v}`);
    }
    wrap.title = words.join(", ");
    wrap.setAttribute("aria-label", `HTF alignment: ${words.join(", ")}`);
    return wrap;
  }

  // Provenance: the source names where a value came from; the colour says how sure it is.
  const SOURCE_KIND = {
    indicator: "received", signal_created: "received", bars: "measured",
    calculated: "estimated", trade_id: "estimated", inferred: "inferred",
  };
  function sourceBadge(source) {
    if (!source) return null;
    const kind = SOURCE_KIND[source] || "other";
    return el("span", { class: `badge src src-${kind}`, title: `data_source: ${source} (${kind})` }, source);
  }
  function confidenceBadge(conf) {
    if (conf === null || conf === undefined) return null;
    const c = Number(conf);
    const band = c >= 1 ? "full" : c >= 0.9 ? "high" : c >= 0.8 ? "mid" : "low";
    return el("span", { class: `badge conf conf-${band}`, title: `confidence ${c}` }, c.toFixed(2));
  }
  function severityBadge(sev) {
    return el("span", { class: sev === "abnormal" ? "badge sev-abnormal" : "badge sev-expected" }, sev || "?");
  }

  // ---------------------------------------------------------------------------------------------
  // API: relative URLs (works behind a path prefix); the page's own ?token= becomes a Bearer
  // ---------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") qs.set(k, v);
    }
    const url = `${path}${qs.toString() ? `?${qs}` : ""}`;
    const headers = { Accept: "application/json" };
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    const response = await fetch(url, { headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const err = (body && body.error) || {};
      throw new ApiError(response.status, err.code || "http_error",
        err.message || `${path}: HTTP ${response.status}`);
    }
    return body;
  }

  const errors = new Map();         // source -> message; the banner shows them all
  function setError(source, error) {
    if (error) errors.set(source, error.message || String(error));
    else errors.delete(source);
    const box = $("error");
    if (errors.size === 0) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = [...new Set(errors.values())].join(" · ");   // one 401 fails every source
    box.hidden = false;
  }

  // ---------------------------------------------------------------------------------------------
  // State, kept in the URL hash so a reload (or a shared link) keeps the filters and open signal
  // ---------------------------------------------------------------------------------------------
  const state = {
    view: "signals",
    filters: Object.fromEntries(FILTERS.map((k) => [k, ""])),
    limit: 100,
    cursors: [null],            // stack: the last one is the current page's cursor
    cCursors: [null],
    open: null,                 // trade_id of the open detail
    hidden: document.hidden,
  };

  function readHash() {
    const h = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.view = ["signals", "cancelled", "dead"].includes(h.get("view")) ? h.get("view") : "signals";
    for (const k of FILTERS) state.filters[k] = h.get(k) || "";
    const limit = Number(h.get("limit"));
    state.limit = [50, 100, 250].includes(limit) ? limit : 100;
    state.open = h.get("open") || null;
  }

  function writeHash() {
    const h = new URLSearchParams();
    if (state.view !== "signals") h.set("view", state.view);
    for (const k of FILTERS) if (state.filters[k]) h.set(k, state.filters[k]);
    if (state.limit !== 100) h.set("limit", String(state.limit));
    if (state.open) h.set("open", state.open);
    const hash = h.toString();
    const url = `${location.pathname}${location.search}${hash ? `#${hash}` : ""}`;
    if (url !== `${location.pathname}${location.search}${location.hash}`) {
      history.replaceState(null, "", url);
    }
  }

  function filterParams() {
    const p = {};
    for (const k of FILTERS) if (state.filters[k]) p[k] = state.filters[k].trim();
    return p;
  }

  function showFilters() {
    for (const k of FILTERS) {
      const input = $(`f-${k}`);
      if (input && input.value !== state.filters[k] && document.activeElement !== input) {
        input.value = state.filters[k];
      }
    }
    $("f-limit").value = String(state.limit);
    for (const b of document.querySelectorAll("#summary button")) {
      b.setAttribute("aria-pressed", String(b.dataset.status === state.filters.status));
    }
  }

  function showView() {
    for (const tab of document.querySelectorAll(".tabs [role=tab]")) {
      const on = tab.dataset.view === state.view;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !on;
    }
    // Status belongs to the all-signals list; the others ignore it.
    $("f-status").disabled = state.view !== "signals";
    $("filters").hidden = state.view === "dead";
    $("summary").hidden = state.view === "dead";
  }

  // ---------------------------------------------------------------------------------------------
  // Keyed table rendering: rows are updated in place, so focus, scroll and selection survive a
  // refresh; a row is rebuilt only when its data changed, and moved only when its place did.
  // ---------------------------------------------------------------------------------------------
  function syncRows(tbody, rows, keyOf, build) {
    const existing = new Map();
    for (const tr of tbody.rows) existing.set(tr.dataset.key, tr);
    const wanted = new Set(rows.map(keyOf));
    for (const [key, tr] of existing) {
      if (!wanted.has(key)) tr.remove();
    }
    let cursor = tbody.firstElementChild;
    for (const row of rows) {
      const key = keyOf(row);
      const sig = JSON.stringify(row);
      let tr = existing.get(key);
      if (!tr) {
        tr = el("tr", { dataset: { key } });
      }
      if (tr.dataset.sig !== sig) {
        tr.replaceChildren(...build(row));
        tr.dataset.sig = sig;
      }
      if (tr !== cursor) tbody.insertBefore(tr, cursor);
      else cursor = cursor.nextElementSibling;
      tr.classList.toggle("open", key === state.open);
    }
  }

  function rowForKey(tbody, key) {
    for (const tr of tbody.rows) if (tr.dataset.key === key) return tr;
    return null;
  }

  function makeRowInteractive(tr, tradeId) {
    tr.tabIndex = 0;
    tr.dataset.tradeId = tradeId;
    tr.setAttribute("aria-label", `Signal ${tradeId}: press Enter for its detail`);
  }

  // ---------------------------------------------------------------------------------------------
  // All signals
  // ---------------------------------------------------------------------------------------------
  function signalCells(s) {
    const mfeCls = (v) => (v === null || v === undefined ? "" : v > 0 ? "pos" : "");
    const maeCls = (v) => (v === null || v === undefined ? "" : v < 0 ? "neg" : "");
    return [
      el("td", null, ...statusBadge(s.status, s)),
      el("td", null, timeEl(s.signal_time, false)),
      el("td", null, dirText(s.direction)),
      el("td", null, s.session || "—"),
      el("td", null, s.symbol || "—"),
      numCell(price(s.entry_price)),
      numCell(price(s.stop_loss)),
      numCell(price(s.risk)),
      numCell(rValue(s.no_be_mfe), mfeCls(s.no_be_mfe)),
      numCell(rValue(s.be_mfe), mfeCls(s.be_mfe)),
      numCell(rValue(s.mae), maeCls(s.mae)),
      el("td", null, htfGlyphs(s.htf_alignment)),
      el("td", { class: "num" }, el("span", {
        class: `health ${healthClass(s.health_score)}`,
        title: `${s.abnormal_gaps || 0} abnormal of ${s.open_gaps || 0} open gaps`,
      }, scoreText(s.health_score))),
      el("td", { class: "mono" }, s.trade_id),
    ];
  }

  let signalsSeq = 0;
  async function loadSignals() {
    const seq = ++signalsSeq;
    const cursor = state.cursors[state.cursors.length - 1];
    const data = await api("api/automated-signals/all-signals",
      { ...filterParams(), limit: state.limit, cursor });
    if (seq !== signalsSeq) return;          // the filters changed while this was in flight
    renderSummary(data.summary || {});
    const tbody = $("signals-body");
    syncRows(tbody, data.signals || [], (s) => s.trade_id, (s) => signalCells(s));
    for (const tr of tbody.rows) makeRowInteractive(tr, tr.dataset.key);
    $("signals-empty").hidden = (data.signals || []).length > 0;
    state.nextCursor = data.next_cursor || null;
    $("next").disabled = !state.nextCursor;
    $("prev").disabled = state.cursors.length <= 1;
    const page = state.cursors.length;
    const first = (page - 1) * state.limit + 1;
    const n = data.count !== undefined ? data.count : (data.signals || []).length;
    $("page-info").textContent = n ? `Page ${page} · rows ${first}–${first + n - 1}` : `Page ${page}`;
    if (!firstRowsMarked && n) {
      firstRowsMarked = true;
      performance.mark("sigsync:first-rows");
    }
  }
  let firstRowsMarked = false;

  function renderSummary(sum) {
    for (const k of ["total", "pending", "active", "exited", "cancelled"]) {
      $(`sum-${k}`).textContent = sum[k] === undefined || sum[k] === null ? "–" : String(sum[k]);
    }
    const rate = sum.confirmation_rate;
    $("sum-rate").textContent = rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`;
  }

  // ---------------------------------------------------------------------------------------------
  // Cancelled signals
  // ---------------------------------------------------------------------------------------------
  let cancelledSeq = 0;
  async function loadCancelled() {
    const seq = ++cancelledSeq;
    const params = filterParams();
    delete params.status;
    const data = await api("api/automated-signals/cancelled-signals",
      { ...params, limit: state.limit, cursor: state.cCursors[state.cCursors.length - 1] });
    if (seq !== cancelledSeq) return;
    const rows = data.signals || [];
    const tbody = $("cancelled-body");
    syncRows(tbody, rows, (s) => s.trade_id, (s) => [
      el("td", null, timeEl(s.signal_time, false)),
      el("td", null, dirText(s.direction)),
      el("td", null, s.session || "—"),
      el("td", null, s.symbol || "—"),
      el("td", null, timeEl(s.cancelled_at, false)),
      el("td", { class: "mono" }, s.cancelled_by || "—"),
      el("td", null, s.cancel_reason || "—"),
      numCell(s.bars_pending === null || s.bars_pending === undefined ? null : String(s.bars_pending)),
      el("td", null, sourceBadge(s.data_source), confidenceBadge(s.confidence)),
      el("td", { class: "mono" }, s.trade_id),
    ]);
    for (const tr of tbody.rows) makeRowInteractive(tr, tr.dataset.key);
    $("cancelled-empty").hidden = rows.length > 0;
    state.cNextCursor = data.next_cursor || null;
    $("c-next").disabled = !state.cNextCursor;
    $("c-prev").disabled = state.cCursors.length <= 1;
    const total = data.total !== undefined ? ` of ${data.total}` : "";
    $("c-page-info").textContent = `Page ${state.cCursors.length} · ${rows.length} rows${total}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Dead letters
  // ---------------------------------------------------------------------------------------------
  // <details> the user opened or closed, by data-key, so a refresh keeps them as they were.
  const detailsChoice = new Map();
  document.addEventListener("toggle", (e) => {
    const d = e.target;
    if (d instanceof HTMLDetailsElement && d.dataset.key) detailsChoice.set(d.dataset.key, d.open);
  }, true);

  function collapsible(key, summary, content, openByDefault = false) {
    const d = el("details", { dataset: { key } }, el("summary", null, summary));
    d.open = detailsChoice.has(key) ? detailsChoice.get(key) : openByDefault;
    d.append(content);
    return d;
  }

  async function loadDead() {
    const data = await api("api/rejected", { limit: 200 });
    const rows = data.rejected || [];
    $("dead-info").textContent = `${data.total} dead letter${data.total === 1 ? "" : "s"} kept` +
      (rows.length < data.total ? `; the newest ${rows.length} shown` : "") +
      ". Each is a request that was refused, with its reason; `sigsync replay-rejected` re-ingests them.";
    syncRows($("dead-body"), rows, (r) => String(r.rejected_id), (r) => [
      el("td", null, timeEl(r.received_at)),
      el("td", { class: "num" }, String(r.status)),
      el("td", { class: "mono" }, r.code || "—"),
      el("td", null, r.message || "—", r.replayed_at ? el("span", { class: "badge src-received" }, "replayed") : null),
      el("td", { class: "mono" }, r.peer || "—"),
      el("td", null, collapsible(`dead-${r.rejected_id}`, `${r.body_size ?? ""} bytes · ${r.content_type || "no content type"}`,
        el("pre", { class: "raw" }, r.raw_body || ""))),
    ]);
    for (const tr of $("dead-body").rows) tr.classList.add("static-row");
    $("dead-empty").hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------------------------------------
  // Health panel
  // ---------------------------------------------------------------------------------------------
  function humanise(name) {
    const s = String(name).replace(/_/g, " ");
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  function detailText(detail) {
    if (!detail || typeof detail !== "object") return "";
    return Object.entries(detail)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k.replace(/_/g, " ")}: ${typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v) ? shown(v) : valueText(v)}`)
      .join(" · ");
  }

  async function loadHealth() {
    const [health, rejected] = await Promise.all([
      api("api/health"), api("api/rejected", { limit: 5 }),
    ]);
    const win = (health.windows || {})[health.score_window] || {};
    const scoreEl = $("health-score");
    scoreEl.textContent = scoreText(health.score);
    scoreEl.dataset.score = health.score === null || health.score === undefined ? "" : String(health.score);
    scoreEl.className = `score ${healthClass(health.score)}`;
    $("health-window").textContent = `overall, ${health.score_window === "all" ? "all time" : `last ${health.score_window}`}`;
    const others = Object.entries(health.windows || {})
      .filter(([k]) => k !== health.score_window)
      .map(([k, w]) => `${k === "all" ? "all time" : k}: ${scoreText(w.score)}`);
    $("health-signals").textContent = `${win.signals ?? 0} signals, ${win.abnormal_gaps ?? 0} abnormal / ${win.expected_gaps ?? 0} expected gaps` +
      (others.length ? ` · ${others.join(", ")}` : "");

    const sync = health.last_sync;
    const syncBox = $("health-sync");
    if (!sync) {
      syncBox.replaceChildren("no sync run yet");
    } else {
      const outcome = el("span", { class: sync.outcome === "ok" ? "outcome-ok" : "outcome-failed" }, sync.outcome || "?");
      syncBox.replaceChildren(
        outcome, ` · run ${sync.run_id} · `, timeEl(sync.started_at), paren(ago(sync.started_at, health.now)),
        ` · ${sync.examined ?? 0} examined, ${sync.changes ?? 0} changes`,
        sync.error ? el("div", { class: "outcome-failed" }, sync.error) : "");
    }
    const seen = health.indicator_last_seen;
    $("health-seen").replaceChildren(...(seen ? [timeEl(seen), paren(ago(seen, health.now))] : ["never"]));
    $("health-coverage").textContent = win.signal_coverage === null || win.signal_coverage === undefined
      ? "–" : `${(win.signal_coverage * 100).toFixed(1)}% of ${win.confirmed ?? 0} confirmed signals had their SIGNAL_CREATED`;

    const conds = health.conditions || [];
    const active = conds.filter((c) => c.active);
    const items = active.map((c) => el("li", { class: "cond-active" }, humanise(c.condition),
      el("div", { class: "muted" }, detailText(c.detail))));
    const quiet = conds.filter((c) => !c.active).map((c) => humanise(c.condition).toLowerCase());
    if (quiet.length) items.push(el("li", { class: "cond-ok", title: quiet.join(", ") }, `OK: ${quiet.join(", ")}`));
    if (!conds.length) items.push(el("li", { class: "cond-ok" }, "No global conditions reported"));
    $("health-conditions").replaceChildren(...items);

    const gaps = Object.entries(win.gaps_by_type || {})
      .sort((a, b) => (b[1].abnormal || 0) - (a[1].abnormal || 0) || a[0].localeCompare(b[0]));
    const gapRows = gaps.map(([gap, n]) => el("tr", { class: "static-row" },
      // a long name may break after an underscore, never inside a word
      el("td", { class: "mono" }, ...gap.split("_").flatMap((part, i) => (i ? ["_", el("wbr"), part] : [part]))),
      el("td", { class: n.abnormal ? "num h-bad" : "num" }, String(n.abnormal || 0)),
      el("td", { class: "num" }, String(n.expected || 0))));
    if (!gapRows.length) gapRows.push(el("tr", null, el("td", { colspan: 3, class: "muted" }, "No open gaps")));
    $("gaps-body").replaceChildren(...gapRows);
    const recent = health.score_window !== "all";
    $("gaps-window").textContent = recent ? `(signals of the last ${health.score_window})` : "(all signals)";
    const all = (health.windows || {}).all || {};
    $("gaps-all").textContent = recent
      ? `All time: ${all.abnormal_gaps ?? 0} abnormal, ${all.expected_gaps ?? 0} expected (sqlite3 or /api/gaps for the list)`
      : "";

    $("dead-count").textContent = rejected.total ? `(${rejected.total})` : "";
    const deadItems = (rejected.rejected || []).map((r) => el("li", null,
      timeEl(r.received_at, false), " ", el("span", { class: "mono" }, `${r.status} ${r.code}`),
      el("div", { class: "muted" }, r.message || "")));
    if (!deadItems.length) deadItems.push(el("li", { class: "muted" }, "None"));
    else if (rejected.total > deadItems.length) {
      deadItems.push(el("li", null, el("a", { href: "#view=dead", "data-goto": "dead" }, `All ${rejected.total} dead letters →`)));
    }
    $("health-dead").replaceChildren(...deadItems);
  }

  // Score over time: one point per sync run (7-day window and all time).
  let historyChart = null;
  let historySeries = null;
  let historySig = "";
  function chartBase(container, height) {
    const L = LWC();
    return L.createChart(container, {
      autoSize: true,
      height,
      layout: { background: { type: "solid", color: "transparent" }, textColor: "#8391a7", fontSize: 11 },
      grid: { vertLines: { color: "#1b2436" }, horzLines: { color: "#1b2436" } },
      rightPriceScale: { borderColor: "#243044" },
      timeScale: {
        borderColor: "#243044", timeVisible: true, secondsVisible: false,
        tickMarkFormatter: (t, type) => {
          const p = shownShort(t);
          return type <= 2 ? p.date : p.time;     // Year, Month, DayOfMonth: a date; else a time
        },
      },
      localization: { timeFormatter: (t) => { const p = shownShort(t); return `${p.date} ${p.time} ${p.zone}`; } },
      crosshair: { mode: 0 },
    });
  }

  function uniqueTimes(points) {      // the library wants strictly increasing times
    const out = [];
    for (const p of points) {
      if (out.length && p.time <= out[out.length - 1].time) {
        if (p.time === out[out.length - 1].time) out[out.length - 1] = p;
        continue;
      }
      out.push(p);
    }
    return out;
  }

  async function loadHistory() {
    if (!LWC()) return;
    const data = await api("api/health/history", { limit: 500 });
    const runs = (data.runs || []).filter((r) => r.started_at);
    const sig = JSON.stringify(runs.map((r) => [r.run_id, r.score_7d, r.score_all]));
    if (sig === historySig) return;
    historySig = sig;
    const toPoints = (key) => uniqueTimes(runs.filter((r) => r[key] !== null && r[key] !== undefined)
      .map((r) => ({ time: Math.floor(new Date(r.started_at).getTime() / 1000), value: r[key] })));
    if (!historyChart) {
      const L = LWC();
      historyChart = chartBase($("history-chart"), 150);
      historySeries = {
        d7: historyChart.addSeries(L.LineSeries, { color: "#4c9aff", lineWidth: 2, title: "7d", priceFormat: { type: "price", precision: 1, minMove: 0.1 } }),
        all: historyChart.addSeries(L.LineSeries, { color: "#8391a7", lineWidth: 1, title: "all", priceFormat: { type: "price", precision: 1, minMove: 0.1 } }),
      };
    }
    historySeries.d7.setData(toPoints("score_7d"));
    historySeries.all.setData(toPoints("score_all"));
    historyChart.timeScale().fitContent();
  }

  // ---------------------------------------------------------------------------------------------
  // Signal detail
  // ---------------------------------------------------------------------------------------------
  let detailSig = "";
  let detailSeq = 0;
  let tradeChart = null;
  let returnFocus = null;

  function openDetail(tradeId, trigger) {
    if (!tradeId) return;
    returnFocus = trigger || document.activeElement;
    const changed = state.open !== tradeId;
    state.open = tradeId;
    writeHash();
    const panel = $("detail");
    panel.hidden = false;
    if (changed) {
      detailSig = "";
      $("detail-title").textContent = tradeId;
      $("detail-body").replaceChildren(el("p", { class: "muted" }, "Loading…"));
      destroyTradeChart();
    }
    for (const tbody of [$("signals-body"), $("cancelled-body")]) {
      for (const tr of tbody.rows) tr.classList.toggle("open", tr.dataset.key === tradeId);
    }
    $("detail-close").focus();
    loadDetail().catch((e) => setError("detail", e));
  }

  function closeDetail() {
    if (!state.open) return;
    const tradeId = state.open;
    state.open = null;
    detailSig = "";
    ++detailSeq;
    writeHash();
    destroyTradeChart();
    $("detail").hidden = true;
    $("detail-body").replaceChildren();
    setError("detail", null);
    for (const tbody of [$("signals-body"), $("cancelled-body")]) {
      for (const tr of tbody.rows) tr.classList.remove("open");
    }
    let target = returnFocus && returnFocus.isConnected && !$("detail").contains(returnFocus) ? returnFocus : null;
    if (!target || target === document.body) {
      target = rowForKey(state.view === "cancelled" ? $("cancelled-body") : $("signals-body"), tradeId);
    }
    if (target) target.focus();
    returnFocus = null;
  }

  function destroyTradeChart() {
    if (tradeChart) {
      tradeChart.remove();
      tradeChart = null;
    }
  }

  async function loadDetail() {
    const tradeId = state.open;
    if (!tradeId) return;
    const seq = ++detailSeq;
    let detail;
    try {
      detail = await api(`api/signals/${encodeURIComponent(tradeId)}`);
    } catch (e) {
      if (seq !== detailSeq) return;
      if (e instanceof ApiError && e.status === 404) {
        detailSig = "404";
        $("detail-body").replaceChildren(el("p", null, `No signal ${tradeId} is stored.`));
        return;
      }
      throw e;
    }
    const bars = await loadTradeBars(detail).catch(() => null);
    if (seq !== detailSeq || state.open !== tradeId) return;
    const sig = JSON.stringify([detail, bars]);
    if (sig === detailSig) return;           // nothing new: leave the DOM (and the reader) alone
    detailSig = sig;
    renderDetail(detail, bars);
  }

  function field(detail, name) {
    const f = (detail.fields || {})[name];
    return f ? f.value : null;
  }

  async function loadTradeBars(detail) {
    const symbol = field(detail, "symbol");
    const start = field(detail, "signal_time") || field(detail, "first_received_at");
    if (!symbol || !start) return null;
    const end = field(detail, "exit_sl_at") || field(detail, "exit_tp_at") || field(detail, "cancelled_at") ||
      field(detail, "last_update_at") || field(detail, "last_received_at") || start;
    const pad = 30 * 60 * 1000;
    const since = new Date(new Date(start).getTime() - pad).toISOString();
    const until = new Date(new Date(end).getTime() + pad).toISOString();
    const data = await api("api/bars", { symbol, since, until });
    return (data.bars || []).length ? data.bars : null;
  }

  function section(key, title, content, openByDefault = true) {
    return collapsible(key, title, el("div", { class: "inner" }, content), openByDefault);
  }

  function renderDetail(detail, bars) {
    const body = $("detail-body");
    const scroll = body.scrollTop;
    const focusedKey = document.activeElement && body.contains(document.activeElement)
      ? document.activeElement.closest("[data-key]")?.dataset.key : null;
    destroyTradeChart();
    const f = (name) => field(detail, name);
    $("detail-title").textContent = detail.trade_id;

    const head = el("div", { class: "kv" },
      kv("Status", ...statusBadge(detail.status, {
        status_source: detail.status_source,
        be_state: detail.be_state, be_triggered_at: f("be_triggered_at"),
        exit_be_at: f("exit_be_at"), no_be_mfe: f("no_be_mfe") })),
      kv("Health", el("span", { class: healthClass(detail.health_score) }, scoreText(detail.health_score))),
      kv("Direction", dirText(f("direction"))),
      kv("Symbol", f("symbol") || "—"),
      kv("Session", f("session") || "—"),
      kv("Signal time", timeEl(f("signal_time"))),
      kv("Confirmed", timeEl(f("confirmation_time"))),
      kv("Entry", price(f("entry_price")) ?? "—"),
      kv("Stop", price(f("stop_loss")) ?? "—"),
      kv("Risk (pts)", price(f("risk")) ?? "—"),
      kv("MFE / BE MFE / MAE (R)", `${rValue(f("no_be_mfe")) ?? "—"} / ${rValue(f("be_mfe")) ?? "—"} / ${rValue(f("mae")) ?? "—"}`),
      kv("Exit", f("exit_price") !== null ? `${price(f("exit_price"))} ${f("exit_reason") ? `(${f("exit_reason")})` : ""}` : "—"),
      kv("HTF", htfGlyphs(f("htf_alignment"))));
    const parts = [head];

    if (bars) {
      const box = el("div", { class: "chart", id: "trade-chart", role: "img", "aria-label": `Price chart of ${detail.trade_id} with entry, stop, targets, break-even and exit` });
      parts.push(section("chart", "Price chart", box));
      requestAnimationFrame(() => { if (box.isConnected) drawTradeChart(box, detail, bars); });
    }

    const conflicts = Object.entries(detail.conflicts || {});
    if (conflicts.length) {
      parts.push(section("conflicts", `Conflicts (${conflicts.length})`, el("div", null, ...conflicts.map(([kind, ev]) => {
        const values = ev && Array.isArray(ev.values) ? ev.values.map(valueText)
          : ev && typeof ev === "object" ? Object.entries(ev).map(([k, v]) => `${k}: ${valueText(v)}`) : [valueText(ev)];
        return el("div", { class: "conflict" }, el("strong", { class: "mono" }, kind),
          ...values.map((v) => el("div", { class: "side" }, v)));
      }))));
    }

    const gaps = detail.gaps || [];
    parts.push(section("gaps", `Open gaps (${gaps.length})`, gaps.length ? table(
      ["Gap", "Severity", "Since", "Filled by", "Weight", "Evidence"],
      gaps.map((g) => [el("span", { class: "mono" }, g.gap), severityBadge(g.severity), timeEl(g.since),
        g.filled_by ?? g.tier ?? "—", g.weight ?? "—", el("span", { class: "mono" }, valueText(g.evidence))])) :
      el("p", { class: "muted" }, "None: every expected value is present."), gaps.length > 0));

    const events = detail.events || [];
    parts.push(section("timeline", `Lifecycle timeline (${events.length} events)`,
      el("ol", { class: "timeline", id: "timeline" }, ...events.map((e) => {
        const li = el("li", { class: /^[A-Z_]+$/.test(e.event_type) ? `ev-${e.event_type}` : "", dataset: { eventType: e.event_type, eventId: String(e.event_id) } },
          el("span", { class: "etype" }, e.event_type),
          el("span", { class: "when" }, "received ", timeEl(e.received_at)),
          e.event_time ? (TRIANGLE_STAMPED.test(e.event_type)
            ? el("span", { class: "when", title: "event_timestamp as sent: on ENTRY, BE and EXIT alerts the " +
                "original indicator sends the triangle's time (possibly another trade's), not the bar it reports" },
              "sent as ", timeEl(e.event_time))
            : el("span", { class: "when" }, "bar ", timeEl(e.event_time))) : null,
          e.batch_index !== null && e.batch_index !== undefined ? el("span", { class: "when" }, `batch #${e.batch_index}`) : null,
          e.source ? el("span", { class: "when" }, `via ${e.source}`) : null);
        li.append(collapsible(`raw-${e.event_id}`, `Raw body${e.content_type ? ` (${e.content_type})` : ""}`,
          el("pre", { class: "raw" }, prettyBody(e.raw_body))));
        li.append(collapsible(`payload-${e.event_id}`, "Stored event",
          el("pre", { class: "raw" }, JSON.stringify(e.payload, null, 2))));
        return li;
      }))));

    const fields = Object.entries(detail.fields || {});
    const shown = fields.filter(([, v]) => v.value !== null || v.data_source);
    const empty = fields.filter(([, v]) => v.value === null && !v.data_source).map(([k]) => k);
    parts.push(section("fields", "Fields and where they came from", el("div", null,
      table(["Field", "Value", "Source", "Confidence"], shown.map(([name, v]) => [
        el("span", { class: "mono" }, name),
        /_(time|at)$/.test(name) && typeof v.value === "string" ? timeEl(v.value) : valueText(v.value),
        sourceBadge(v.data_source) || el("span", { class: "nil" }, "—"),
        confidenceBadge(v.confidence) || el("span", { class: "nil" }, "—"),
      ]), { id: "fields-table", rowKey: (i) => shown[i][0] }),
      empty.length ? el("p", { class: "muted" }, `Empty: ${empty.join(", ")}`) : null)));

    const audit = detail.audit;
    parts.push(section("audit", `Reconciliation audit (${audit ? audit.length : "n/a"})`, !audit
      ? el("p", { class: "muted" }, "This server does not report audit rows.")
      : audit.length ? table(["At", "Run", "Field", "Old", "New", "Source", "Conf.", "Tier", "Reason"],
        audit.map((a) => [timeEl(a.at ?? a.created_at), a.run_id ?? "ingest", el("span", { class: "mono" }, a.field),
          el("span", { class: "mono" }, valueText(a.old_value)), el("span", { class: "mono" }, valueText(a.new_value)),
          sourceBadge(a.data_source), confidenceBadge(a.confidence), a.tier ?? "", a.reason ?? ""]))
        : el("p", { class: "muted" }, "No reconciliation changes: every value was received."), false));

    body.replaceChildren(...parts);
    body.scrollTop = scroll;
    if (focusedKey) {
      const again = [...body.querySelectorAll("[data-key]")].find((n) => n.dataset.key === focusedKey);
      const summary = again && again.querySelector("summary");
      if (summary) summary.focus();
    }
  }

  function kv(label, ...value) {
    return el("div", null, el("span", { class: "k" }, label), el("span", { class: "v" }, ...value));
  }

  function table(headers, rows, opts = {}) {
    return el("table", { class: "grid compact static", id: opts.id },
      el("thead", null, el("tr", null, ...headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", null, ...rows.map((cells, i) => el("tr", opts.rowKey ? { dataset: { field: opts.rowKey(i) } } : null,
        ...cells.map((c) => el("td", null, c === null || c === undefined ? "" : c))))));
  }

  function drawTradeChart(box, detail, bars) {
    const L = LWC();
    if (!L) return;
    const f = (name) => field(detail, name);
    const tf = f("timeframe");
    const frames = new Map();
    for (const b of bars) frames.set(b.timeframe, (frames.get(b.timeframe) || 0) + 1);
    const frame = frames.has(tf) ? tf : [...frames.entries()].sort((a, b) => b[1] - a[1])[0][0];
    const data = uniqueTimes(bars.filter((b) => b.timeframe === frame).map((b) => ({
      time: Math.floor(new Date(b.time).getTime() / 1000), open: b.open, high: b.high, low: b.low, close: b.close,
    })).sort((a, b) => a.time - b.time));
    if (!data.length) return;
    destroyTradeChart();
    tradeChart = chartBase(box, 260);
    const series = tradeChart.addSeries(L.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
      priceLineVisible: false, lastValueVisible: false,     // only the trade's own levels are lines
    });
    series.setData(data);
    const line = (p, color, title, style) => {
      if (p === null || p === undefined || !Number.isFinite(Number(p))) return;
      series.createPriceLine({ price: Number(p), color, lineWidth: 1, lineStyle: style, axisLabelVisible: true, title });
    };
    const entry = f("entry_price");
    line(entry, "#4c9aff", "Entry", 0);
    line(f("stop_loss"), "#ef5350", "Stop", 0);
    const targets = f("targets") || {};
    const ext = f("targets_extended") || {};
    for (const k of [1, 2, 3]) {
      line(targets[`tp${k}_price`] ?? ext[String(k)], "#26a69a", `${k}R`, 2);
    }
    // as the status badge: an EXIT_SL before any trigger stops the leg, but it never armed
    const armed = f("be_triggered_at") || f("exit_be_at") || (f("no_be_mfe") ?? 0) >= 1.0;
    if (armed) line(f("be_exit_price") ?? entry, "#f0b429", "BE", 1);
    line(f("exit_price"), "#c7b8ff", "Exit", 0);

    const snap = (iso) => {              // a marker sits on the bar that holds its instant
      if (!iso) return null;
      const t = Math.floor(new Date(iso).getTime() / 1000);
      let best = null;
      for (const d of data) { if (d.time <= t) best = d.time; else break; }
      return best;
    };
    const bull = f("direction") !== "Bearish";
    const marks = [
      [f("signal_time"), "Signal", "#9fb3d1", bull ? "belowBar" : "aboveBar", bull ? "arrowUp" : "arrowDown"],
      [f("confirmation_time"), "Entry", "#4c9aff", bull ? "belowBar" : "aboveBar", "circle"],
      [f("be_triggered_at"), "BE", "#f0b429", "aboveBar", "square"],
      [f("exit_be_at"), "BE exit", "#f0b429", "aboveBar", "square"],
      [f("exit_sl_at") || f("exit_tp_at"), "Exit", "#c7b8ff", bull ? "aboveBar" : "belowBar", bull ? "arrowDown" : "arrowUp"],
    ].map(([iso, text, color, position, shape]) => ({ time: snap(iso), text, color, position, shape }))
      .filter((m) => m.time !== null).sort((a, b) => a.time - b.time);
    if (marks.length) L.createSeriesMarkers(series, marks);
    tradeChart.timeScale().fitContent();
  }

  // ---------------------------------------------------------------------------------------------
  // Refresh loop: every 5 s while the tab is visible; one refresh at a time
  // ---------------------------------------------------------------------------------------------
  let timer = null;
  let running = null;
  let lastLoaded = null;        // when every source last answered: what the page shows is from then

  function refresh() {
    if (running) return running;
    const jobs = [];
    const track = (name, p) => jobs.push(p.then(() => setError(name, null), (e) => setError(name, e)));
    if (state.view === "signals") track("signals", loadSignals());
    else if (state.view === "cancelled") track("cancelled", loadCancelled());
    else track("dead", loadDead());
    if (state.view !== "signals") track("summary", loadSummaryOnly());
    track("health", loadHealth());
    track("history", loadHistory());
    if (state.open) track("detail", loadDetail());
    running = Promise.all(jobs).then(() => {
      running = null;
      const stamp = $("updated");
      if (errors.size === 0) {
        lastLoaded = new Date().toISOString();
        stamp.textContent = `Updated ${shown(lastLoaded)}`;
      } else {
        // Old data must not pass for fresh: the stamp stops, and says so
        stamp.textContent = lastLoaded ? `Not updating: data as of ${shown(lastLoaded)}` : "Not loaded";
      }
      stamp.classList.toggle("stale", errors.size > 0);
      schedule();
    });
    return running;
  }

  async function loadSummaryOnly() {
    const data = await api("api/automated-signals/all-signals", { ...filterParams(), limit: 1 });
    renderSummary(data.summary || {});
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (!document.hidden) timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    $("paused").hidden = !document.hidden;
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    } else {
      refresh();
    }
  });

  // A change of filters or page: the current requests' answers are dropped, a new one starts.
  function reload() {
    ++signalsSeq;
    ++cancelledSeq;
    writeHash();
    showFilters();
    if (running) running.then(() => refresh());
    else refresh();
  }

  // Apply {filter: value, ...}; one reload when any of them changes.
  function setFilters(changes) {
    const changed = Object.entries(changes).filter(([k, v]) => state.filters[k] !== v);
    if (!changed.length) return;
    for (const [k, v] of changed) state.filters[k] = v;
    state.cursors = [null];
    state.cCursors = [null];
    reload();
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------------
  function wire() {
    // The zone's name where a heading says which zone its times are in: "New York", "London".
    const place = TZ.includes("/") ? TZ.slice(TZ.lastIndexOf("/") + 1).replace(/_/g, " ") : TZ;
    for (const span of document.querySelectorAll(".tz-name")) span.textContent = place;
    $("tz-id").textContent = TZ;
    const form = $("filters");
    form.addEventListener("submit", (e) => e.preventDefault());
    // A typed filter waits 300 ms for the next key, each on its own timer; any other filter
    // applied meanwhile takes the typed values with it, so none is dropped.
    const pending = new Map();          // filter name -> timer of a typed value not applied yet
    const takeTyped = () => {           // the typed values still waiting, their timers stopped
      const typed = {};
      for (const [n, t] of pending) {
        clearTimeout(t);
        typed[n] = $(`f-${n}`).value.trim();
      }
      pending.clear();
      return typed;
    };
    for (const name of FILTERS) {
      const input = $(`f-${name}`);
      const typed = input.tagName === "INPUT" && input.type !== "date";
      input.addEventListener(typed ? "input" : "change", () => {
        if (typed) {
          clearTimeout(pending.get(name));
          pending.set(name, setTimeout(() => { pending.delete(name); setFilters({ [name]: input.value.trim() }); }, 300));
        } else {
          setFilters({ ...takeTyped(), [name]: input.value });
        }
      });
      if (typed) {
        input.addEventListener("keydown", (e) => {
          if (e.key === "Enter") setFilters({ ...takeTyped(), [name]: input.value.trim() });
        });
      }
    }
    $("f-reset").addEventListener("click", (e) => {
      e.preventDefault();
      takeTyped();                      // dropped: every filter is cleared
      for (const k of FILTERS) state.filters[k] = "";
      for (const k of FILTERS) $(`f-${k}`).value = "";
      state.cursors = [null];
      state.cCursors = [null];
      reload();
    });
    $("f-limit").addEventListener("change", () => {
      state.limit = Number($("f-limit").value) || 100;
      state.cursors = [null];
      state.cCursors = [null];
      reload();
    });
    for (const b of document.querySelectorAll("#summary button")) {
      b.addEventListener("click", () => {
        if (state.view !== "signals") { state.view = "signals"; showView(); }
        $("f-status").value = b.dataset.status;
        setFilters({ ...takeTyped(), status: b.dataset.status });
      });
    }
    $("next").addEventListener("click", () => {
      if (!state.nextCursor) return;
      state.cursors.push(state.nextCursor);
      reload();
      $("signals-wrap").scrollTop = 0;
    });
    $("prev").addEventListener("click", () => {
      if (state.cursors.length <= 1) return;
      state.cursors.pop();
      reload();
    });
    $("c-next").addEventListener("click", () => {
      if (!state.cNextCursor) return;
      state.cCursors.push(state.cNextCursor);
      reload();
    });
    $("c-prev").addEventListener("click", () => {
      if (state.cCursors.length <= 1) return;
      state.cCursors.pop();
      reload();
    });

    const tabs = [...document.querySelectorAll(".tabs [role=tab]")];
    const selectTab = (tab) => {
      state.view = tab.dataset.view;
      showView();
      reload();
    };
    for (const tab of tabs) {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", (e) => {
        const i = tabs.indexOf(tab);
        const next = e.key === "ArrowRight" ? tabs[(i + 1) % tabs.length]
          : e.key === "ArrowLeft" ? tabs[(i - 1 + tabs.length) % tabs.length] : null;
        if (next) { e.preventDefault(); next.focus(); selectTab(next); }
      });
    }
    document.addEventListener("click", (e) => {
      const link = e.target.closest("a[data-goto]");
      if (!link) return;
      e.preventDefault();
      state.view = link.dataset.goto;
      showView();
      reload();
      $(`tab-${state.view}`).focus();
    });

    // Rows: click or Enter opens the detail; arrows move between rows.
    for (const tbody of [$("signals-body"), $("cancelled-body")]) {
      tbody.addEventListener("click", (e) => {
        if (e.target.closest("a, button, summary")) return;
        const tr = e.target.closest("tr[data-trade-id]");
        if (tr) openDetail(tr.dataset.tradeId, tr);
      });
      tbody.addEventListener("keydown", (e) => {
        const tr = e.target.closest("tr[data-trade-id]");
        if (!tr || e.target !== tr) return;
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          openDetail(tr.dataset.tradeId, tr);
        } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
          const next = e.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
          if (next) { e.preventDefault(); next.focus(); }
        }
      });
    }
    $("detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.open) {
        e.preventDefault();
        closeDetail();
      }
    });
    window.addEventListener("hashchange", () => {
      const before = state.open;
      readHash();
      state.cursors = [null];
      state.cCursors = [null];
      showView();
      if (state.open && state.open !== before) openDetail(state.open);
      else if (!state.open && before) { state.open = before; closeDetail(); }
      reload();
    });
  }

  readHash();
  wire();
  showView();
  showFilters();
  $("paused").hidden = !document.hidden;
  if (state.open) {
    const id = state.open;
    state.open = null;
    openDetail(id, null);
  }
  refresh();
})();
