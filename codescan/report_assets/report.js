// codescan review report: draws the records of data.js (window.CODESCAN_REPORT).
// Every string in the records comes from scanned files (names, metadata), so text is only ever
// set with textContent, values and attributes — never innerHTML.
"use strict";

(() => {
  const DATA = window.CODESCAN_REPORT;
  const RECORDS = DATA.records;
  const THUMBS = DATA.thumbs;
  const PAGE = 100;
  const FILTERS = ["q", "status", "combined", "evidence", "error", "sort"];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = { q: "", status: "", combined: "", evidence: "", error: "", sort: "score", page: 0 };
  let shown = [];
  let selected = -1;
  let lowerPaths = null;

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "");
  const evidenceOf = (r) => (Array.isArray(r.evidence) ? r.evidence : []);

  // ---- header, counts, notes ------------------------------------------------------------

  function tally(key) {
    const counts = new Map();
    for (const r of RECORDS) {
      const value = key(r);
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v !== undefined && v !== null && v !== "") counts.set(v, (counts.get(v) || 0) + 1);
      }
    }
    return counts;
  }

  function drawHeader() {
    const status = tally((r) => r.status);
    const fakeByEvidence = RECORDS.filter((r) => r.combined === "fake").length;
    $("counts").textContent =
      `${RECORDS.length} files: ${status.get("real") || 0} real, ${status.get("fake") || 0} fake ` +
      `(${fakeByEvidence} fake once evidence is counted), ${status.get("error") || 0} errors, ` +
      `${status.get("skipped") || 0} skipped`;
    const h = DATA.header || {};
    const weights = h.weights || {};
    const rows = [
      ["weights", `${weights.name || "?"} ${(weights.sha256 || "").slice(0, 12)}`],
      ["engine", `${h.engine || "?"} on ${h.device || "?"}, ${h.precision || "?"}`],
      ["head", h.head || ""],
      ["thresholds", Object.entries(h.thresholds || {}).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["evidence", h.evidence || "none"],
      ["codescan", `${h.codescan || "?"} (schema ${h.schema_version ?? "?"})`],
    ];
    if (DATA.summary && typeof DATA.summary.seconds === "number") rows.push(["scan time", `${DATA.summary.seconds.toFixed(1)} s`]);
    for (const [term, value] of rows) $("scan").append(el("dt", { text: term }), el("dd", { text: value }));
    for (const note of DATA.notes || []) $("notes").append(el("li", { text: note }));
    const errors = [...tally((r) => (r.status === "error" ? r.error_code : null))];
    if (errors.length) {
      $("errors").append("errors: ");
      for (const [code, n] of errors) {
        const link = el("a", { href: "#", class: "code", text: `${code} (${n})` });
        link.addEventListener("click", (e) => { e.preventDefault(); setFilter("error", code); });
        $("errors").append(link, " ");
      }
    }
  }

  function fillSelect(id, counts, label = (v) => v) {
    for (const [value, n] of [...counts].sort((a, b) => b[1] - a[1])) {
      const option = el("option", { text: `${label(value)} (${n})` });
      option.value = value;
      $(id).append(option);
    }
  }

  function drawFilters() {
    fillSelect("status", tally((r) => r.status));
    fillSelect("combined", tally((r) => r.combined));
    fillSelect("error", tally((r) => r.error_code));
    fillSelect("evidence", tally((r) => evidenceOf(r).map((e) => `kind:${e.kind}`)), (v) => v.slice(5));
    fillSelect("evidence", tally((r) => evidenceOf(r).filter((e) => e.generator).map((e) => `generator:${e.generator}`)));
  }

  // ---- histograms -------------------------------------------------------------------------

  function headScores() {
    const heads = new Map();
    for (const r of RECORDS) {
      const perHead = r.heads && typeof r.heads === "object" ? Object.entries(r.heads).map(([n, v]) => [n, v && v.score])
        : [[r.head, r.score]];
      for (const [name, score] of perHead) {
        if (typeof name !== "string" || typeof score !== "number") continue;
        if (!heads.has(name)) heads.set(name, []);
        heads.get(name).push(score);
      }
    }
    return heads;
  }

  function threshold(head) {
    const t = ((DATA.header || {}).thresholds || {})[head];
    if (typeof t === "number") return t;
    const r = RECORDS.find((x) => x.head === head && typeof x.threshold === "number");
    return r ? r.threshold : 0;
  }

  function drawHistogram(head, scores) {
    const W = 320, H = 110, BINS = 40, t = threshold(head);
    let lo = t, hi = t;
    for (const s of scores) { if (s < lo) lo = s; if (s > hi) hi = s; }
    if (hi === lo) { hi += 1; lo -= 1; }
    const bins = new Array(BINS).fill(0);
    for (const s of scores) bins[Math.min(BINS - 1, Math.floor(((s - lo) / (hi - lo)) * BINS))]++;
    const top = Math.max(...bins);
    const x = (v) => ((v - lo) / (hi - lo)) * W;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 14}`, width: W, height: H + 14, role: "img" });
    const title = svg("title");
    title.textContent = `${head}: ${scores.length} scores, threshold ${t}`;
    chart.append(title);
    bins.forEach((n, i) => {
      const h = top ? (n / top) * H : 0;
      const mid = lo + ((i + 0.5) / BINS) * (hi - lo);
      chart.append(svg("rect", { x: (i * W) / BINS, y: H - h, width: W / BINS - 1, height: h, class: mid > t ? "bar fake" : "bar real" }));
    });
    chart.append(svg("line", { x1: x(t), x2: x(t), y1: 0, y2: H, class: "threshold" }));
    for (const [value, anchor] of [[lo, "start"], [hi, "end"]]) {
      const label = svg("text", { x: anchor === "start" ? 0 : W, y: H + 12, "text-anchor": anchor });
      label.textContent = value.toFixed(2);
      chart.append(label);
    }
    const label = svg("text", { x: x(t), y: H + 12, "text-anchor": "middle", class: "threshold-label" });
    label.textContent = `threshold ${t}`;
    chart.append(label);
    return el("figure", {}, [chart, el("figcaption", { text: `${head} (${scores.length} scores)` })]);
  }

  function drawHistograms() {
    for (const [head, scores] of headScores()) $("histograms").append(drawHistogram(head, scores));
  }

  // ---- filter, sort, URL fragment ---------------------------------------------------------

  function matches(r, i) {
    if (state.status && r.status !== state.status) return false;
    if (state.combined && r.combined !== state.combined) return false;
    if (state.error && r.error_code !== state.error) return false;
    if (state.evidence) {
      const [field, value] = [state.evidence.slice(0, state.evidence.indexOf(":")), state.evidence.slice(state.evidence.indexOf(":") + 1)];
      if (!evidenceOf(r).some((e) => e[field] === value)) return false;
    }
    return !state.q || lowerPaths[i].includes(state.q.toLowerCase());
  }

  const byScore = (sign) => (a, b) => {
    const sa = RECORDS[a].score, sb = RECORDS[b].score;
    const na = typeof sa !== "number", nb = typeof sb !== "number";
    if (na || nb) return na - nb || a - b; // records without a score last, in scan order
    return sign * (sb - sa) || a - b;
  };
  const SORTS = {
    score: byScore(1),
    "score-asc": byScore(-1),
    path: (a, b) => (RECORDS[a].path < RECORDS[b].path ? -1 : RECORDS[a].path > RECORDS[b].path ? 1 : a - b),
    order: (a, b) => a - b,
  };

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const key of FILTERS) state[key] = params.get(key) || (key === "sort" ? "score" : "");
    if (!SORTS[state.sort]) state.sort = "score";
    state.page = Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1);
    for (const key of FILTERS) {
      const control = $(key);
      control.value = state[key];
      if (control.value !== state[key]) { // a value this report has no option for: keep it selectable
        const option = el("option", { text: `${state[key]} (0)` });
        option.value = state[key];
        control.append(option);
        control.value = state[key];
      }
    }
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const key of FILTERS) if (state[key] && !(key === "sort" && state.sort === "score")) params.set(key, state[key]);
    if (state.page) params.set("page", String(state.page + 1));
    history.replaceState(null, "", `#${params}`);
  }

  function apply() {
    const start = performance.now();
    if (!lowerPaths) lowerPaths = RECORDS.map((r) => r.path.toLowerCase());
    shown = [];
    for (let i = 0; i < RECORDS.length; i++) if (matches(RECORDS[i], i)) shown.push(i);
    shown.sort(SORTS[state.sort]);
    state.page = Math.min(state.page, Math.max(0, Math.ceil(shown.length / PAGE) - 1));
    drawPage();
    document.body.setAttribute("data-render-ms", (performance.now() - start).toFixed(1));
    document.body.setAttribute("data-shown", String(shown.length));
  }

  function setFilter(key, value) {
    state[key] = value;
    $(key).value = value;
    state.page = 0;
    selected = -1;
    writeHash();
    apply();
  }

  // ---- rows and the detail panel ------------------------------------------------------------

  function thumbnail(i, size) {
    const r = RECORDS[i];
    const thumb = THUMBS[i];
    if (thumb !== "ok") {
      const why = thumb || (r.status === "real" || r.status === "fake" ? "no thumbnail" : "");
      return el("span", { class: `nothumb ${thumb || ""}`, text: why });
    }
    const img = el("img", { alt: "", loading: "lazy", class: `t${size}` });
    img.src = `report_files/thumbs/${r.sha256}.jpg`;
    const box = el("span", { class: "thumb" }, [img]);
    const c = r.crop;
    if (Array.isArray(c) && c.length === 4 && r.width > 0 && r.height > 0) {
      const outline = el("span", { class: "crop", title: `judged crop ${c.join(", ")}` });
      outline.style.left = `${(100 * c[0]) / r.width}%`;
      outline.style.top = `${(100 * c[1]) / r.height}%`;
      outline.style.width = `${(100 * (c[2] - c[0])) / r.width}%`;
      outline.style.height = `${(100 * (c[3] - c[1])) / r.height}%`;
      box.append(outline);
    }
    return box;
  }

  function headsText(r) {
    if (!r.heads || typeof r.heads !== "object") return "";
    return Object.entries(r.heads).map(([n, v]) => `${n} ${fmt(v && v.score)} ${(v && v.status) || ""}`).join("; ");
  }

  function evidenceText(r) {
    return evidenceOf(r).map((e) => e.kind + (e.generator ? `: ${e.generator}` : "") + (e.conclusive ? " (conclusive)" : "")).join("; ");
  }

  function row(i) {
    const r = RECORDS[i];
    const tr = el("tr", { "data-index": String(i), class: `st-${r.status}` }, [
      el("td", {}, [thumbnail(i, 96)]),
      el("td", { class: "path", text: r.path }),
      el("td", { class: "status", text: r.status }),
      el("td", { class: "score", text: fmt(r.score) }),
      el("td", { text: headsText(r) }),
      el("td", { text: r.combined || "" }),
      el("td", { text: evidenceText(r) }),
      el("td", { class: "code", text: r.error_code ? `${r.error_code}${r.error ? `: ${r.error}` : ""}` : "" }),
    ]);
    tr.addEventListener("click", () => select(shown.indexOf(i) % PAGE, true));
    return tr;
  }

  function drawPage() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    const first = state.page * PAGE;
    $("rows").replaceChildren(...shown.slice(first, first + PAGE).map(row));
    $("pageinfo").textContent = shown.length
      ? `${first + 1}–${Math.min(first + PAGE, shown.length)} of ${shown.length} shown · page ${state.page + 1}/${pages}`
      : "no record matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    if (selected >= 0) select(Math.min(selected, $("rows").children.length - 1), false);
  }

  function select(position, open) {
    const rows = $("rows").children;
    if (!rows.length) return;
    selected = Math.max(0, Math.min(position, rows.length - 1));
    for (const tr of rows) tr.classList.remove("sel");
    rows[selected].classList.add("sel");
    rows[selected].scrollIntoView({ block: "nearest" });
    if (open || !$("detail").hidden) showDetail(Number(rows[selected].getAttribute("data-index")));
  }

  function showDetail(i) {
    const r = RECORDS[i];
    const list = el("dl");
    const fields = ["path", "status", "score", "threshold", "head", "combined", "format", "sha256",
      "archive", "member", "member_index", "key", "error_code", "error"];
    for (const key of fields) {
      if (r[key] !== undefined && r[key] !== null) list.append(el("dt", { text: key }), el("dd", { text: String(r[key]) }));
    }
    if (r.width) list.append(el("dt", { text: "size" }), el("dd", { text: `${r.width} × ${r.height}` }));
    if (Array.isArray(r.crop)) list.append(el("dt", { text: "crop" }), el("dd", { text: r.crop.join(", ") }));
    if (headsText(r)) list.append(el("dt", { text: "heads" }), el("dd", { text: headsText(r) }));
    const items = evidenceOf(r).map((e) => el("li", {}, [
      el("b", { text: String(e.kind) }),
      ` ${e.generator || ""}${e.conclusive ? " · conclusive" : ""}${e.valid === false ? " · signature invalid" : ""}`,
      e.detail ? el("div", { class: "detail", text: String(e.detail) }) : "",
    ]));
    $("detail-body").replaceChildren(thumbnail(i, 256), list, items.length ? el("ul", { class: "evidence" }, items) : "");
    $("detail").hidden = false;
  }

  function move(step) {
    const next = selected + step;
    const onPage = $("rows").children.length;
    if (next >= onPage && !$("next").disabled) turn(1, 0);
    else if (next < 0 && !$("prev").disabled) turn(-1, PAGE - 1);
    else select(next, false);
  }

  function turn(step, position = 0) {
    state.page += step;
    selected = position;
    writeHash();
    drawPage();
  }

  function onKey(e) {
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement;
    if (e.key === "Escape") { $("detail").hidden = true; e.target.blur?.(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const actions = {
      "/": () => $("q").focus(),
      j: () => move(1), ArrowDown: () => move(1),
      k: () => move(-1), ArrowUp: () => move(-1),
      n: () => !$("next").disabled && turn(1), ArrowRight: () => !$("next").disabled && turn(1),
      p: () => !$("prev").disabled && turn(-1), ArrowLeft: () => !$("prev").disabled && turn(-1),
      Enter: () => selected >= 0 && select(selected, true),
    };
    if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
  }

  function wire() {
    let typingTimer = 0;
    $("q").addEventListener("input", () => {
      clearTimeout(typingTimer);
      typingTimer = setTimeout(() => setFilter("q", $("q").value), 150);
    });
    for (const key of FILTERS.slice(1)) $(key).addEventListener("change", () => setFilter(key, $(key).value));
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("prev").addEventListener("click", () => turn(-1));
    $("next").addEventListener("click", () => turn(1));
    $("close").addEventListener("click", () => { $("detail").hidden = true; });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", () => { readHash(); apply(); });
  }

  drawHeader();
  drawFilters();
  drawHistograms();
  wire();
  readHash();
  apply();
  document.body.setAttribute("data-load-ms", performance.now().toFixed(1));
})();
