// codescan review report: draws the records of data.js (window.CODESCAN_REPORT).
// Every string in the records comes from scanned files (names, metadata), so text is only ever
// set with textContent, values and attributes — never innerHTML.
"use strict";

(() => {
  const DATA = window.CODESCAN_REPORT;
  const RECORDS = DATA.records;
  const THUMBS = DATA.thumbs;
  const FILES = DATA.files; // this page's own files folder (NAME_files for NAME.html), URL-encoded by codescan
  const PAGE = 100;
  const FILTERS = ["q", "status", "combined", "evidence", "error", "sort"];
  const STATUSES = ["fake", "real", "error", "skipped"];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = { q: "", status: "", combined: "", evidence: "", error: "", sort: "score", page: 0, view: "table" };
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

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "");
  // 3 significant digits, as a plain number: -0.13326283361426672 -> "-0.133", 1234.5 -> "1230"
  const sig = (x) => (typeof x === "number" && Number.isFinite(x) ? String(Number(x.toPrecision(3)) || 0) : "?");
  const evidenceOf = (r) => (Array.isArray(r.evidence) ? r.evidence : []);
  const statusClass = (r) => `st-${STATUSES.includes(r.status) ? r.status : "other"}`;

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
      `(${fakeByEvidence} fake once evidence is counted), ${status.get("error") || 0} error${status.get("error") === 1 ? "" : "s"}, ` +
      `${status.get("skipped") || 0} skipped`;
    const h = DATA.header || {};
    const weights = h.weights || {};
    const rows = [
      ["weights", `${weights.name || "?"} ${(weights.sha256 || "").slice(0, 12)}`],
      ["engine", `${h.engine || "?"} on ${h.device || "?"}, ${h.precision || "?"}`],
      ["head", h.head || ""],
      ["thresholds", Object.entries(h.thresholds || {}).map(([k, v]) => `${k} ${sig(v)}`).join(", ")],
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
    for (const id of ["combined", "evidence", "error"]) $(id).closest("label").hidden = $(id).options.length < 2; // nothing to choose
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

  function niceStep(span, parts) {
    const raw = span / parts;
    const power = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function ticks(lo, hi, parts) {
    const step = niceStep(hi - lo, parts);
    let digits = 0; // the decimals the step needs: 0.25 -> 2, 2.5 -> 1, 20 -> 0
    while (digits < 12 && Math.abs(Math.round(step * 10 ** digits) - step * 10 ** digits) > 1e-6) digits++;
    const out = [];
    for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) out.push([k * step, (k ? k * step : 0).toFixed(digits)]);
    return out;
  }

  // Label widths are estimated (the chart is built before it is in the page): 10px text is at
  // most ~6px a character. Labels that would overlap one already placed are not drawn.
  const textWidth = (text, size = 10) => text.length * size * 0.6;

  function drawHistogram(head, scores) {
    const W = 380, LEFT = 34, RIGHT = 10, TOP = 16, BARS = 104, H = TOP + BARS + 18, PLOT = W - LEFT - RIGHT;
    const BINS = Math.max(8, Math.min(40, 2 * Math.ceil(Math.sqrt(scores.length))));
    const t = threshold(head);
    let lo = t, hi = t;
    for (const s of scores) { if (s < lo) lo = s; if (s > hi) hi = s; }
    if (hi === lo) { hi += 1; lo -= 1; }
    const bins = new Array(BINS).fill(0);
    for (const s of scores) bins[Math.min(BINS - 1, Math.floor(((s - lo) / (hi - lo)) * BINS))]++;
    const top = Math.max(1, ...bins);
    const countStep = Math.max(1, Math.ceil(niceStep(top, 3))); // whole files; the top tick at or over the tallest bar
    const scaleTop = Math.ceil(top / countStep) * countStep;
    const countTicks = [];
    for (let n = 0; n <= scaleTop; n += countStep) countTicks.push([n, String(n)]);
    const x = (v) => LEFT + ((v - lo) / (hi - lo)) * PLOT;
    const y = (n) => TOP + BARS - (n / scaleTop) * (BARS - 12); // 12px over the tallest bar for its count
    const barWidth = PLOT / BINS;
    const digits = String(top).length;
    const countsOnBars = barWidth >= digits * 5.4 + 2;
    const above = scores.filter((s) => s > t).length;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "histogram", "data-head": head });
    chart.append(svg("title", {}, `${head}: ${scores.length} scores, ${above} above the threshold ${sig(t)}`));
    for (const [n, text] of countTicks) {
      chart.append(svg("line", { x1: LEFT - 3, x2: W - RIGHT, y1: y(n), y2: y(n), class: n ? "grid" : "axis" }));
      chart.append(svg("text", { x: LEFT - 5, y: y(n) + 3.5, "text-anchor": "end", class: "count-axis" }, text));
    }
    bins.forEach((n, i) => {
      const from = lo + (i / BINS) * (hi - lo), to = lo + ((i + 1) / BINS) * (hi - lo);
      const bar = svg("rect", { x: LEFT + i * barWidth + 0.5, y: y(n), width: Math.max(1, barWidth - 1), height: TOP + BARS - y(n),
        class: (from + to) / 2 > t ? "bar fake" : "bar real", "data-count": n });
      bar.append(svg("title", {}, `${sig(from)} to ${sig(to)}: ${n} ${n === 1 ? "file" : "files"}`));
      chart.append(bar);
      if (countsOnBars && n > 0) {
        chart.append(svg("text", { x: LEFT + (i + 0.5) * barWidth, y: y(n) - 2, "text-anchor": "middle", class: "count" }, String(n)));
      }
    });
    // The threshold: its line through the bars, its label in a band of its own above them (so it
    // never meets an axis label), on whichever side of the line has the room.
    const tx = x(t);
    chart.append(svg("line", { x1: tx, x2: tx, y1: TOP - 3, y2: TOP + BARS + 3, class: "threshold" }));
    const tLabel = `threshold ${sig(t)}`;
    const right = tx + 3 + textWidth(tLabel) <= W;
    chart.append(svg("text", { x: right ? tx + 3 : tx - 3, y: TOP - 5, "text-anchor": right ? "start" : "end", class: "threshold-label" }, tLabel));
    // The score axis: round ticks, each label kept inside the chart and dropped if it would touch another.
    let lastEnd = -Infinity;
    for (const [v, text] of ticks(lo, hi, 5)) {
      const width = textWidth(text);
      const left = Math.min(Math.max(x(v) - width / 2, 0), W - width);
      if (left < lastEnd + 4) continue;
      chart.append(svg("line", { x1: x(v), x2: x(v), y1: TOP + BARS, y2: TOP + BARS + 3, class: "axis" }));
      chart.append(svg("text", { x: left, y: TOP + BARS + 14, "text-anchor": "start", class: "score-axis" }, text));
      lastEnd = left + width;
    }
    const caption = `${head}: ${scores.length} scores, ${above} above the threshold (fake), ${scores.length - above} at or below (real)` +
      (countsOnBars ? "" : "; bar heights count files (hover a bar for its count)");
    return el("figure", {}, [chart, el("figcaption", { text: caption })]);
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
    state.view = params.get("view") === "gallery" ? "gallery" : "table";
    for (const key of FILTERS) {
      const control = $(key);
      control.value = state[key];
      if (control.value !== state[key]) { // a value this report has no option for: keep it selectable
        const option = el("option", { text: `${state[key]} (0)` });
        option.value = state[key];
        control.append(option);
        control.value = state[key];
        control.closest("label").hidden = false;
      }
    }
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const key of FILTERS) if (state[key] && !(key === "sort" && state.sort === "score")) params.set(key, state[key]);
    if (state.page) params.set("page", String(state.page + 1));
    if (state.view === "gallery") params.set("view", "gallery");
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

  // ---- thumbnails, table columns, gallery tiles ---------------------------------------------

  function thumbnail(i, size) {
    const r = RECORDS[i];
    const thumb = THUMBS[i];
    if (thumb !== "ok") {
      const why = thumb || (r.status === "real" || r.status === "fake" ? "no thumbnail" : "");
      return el("span", { class: `nothumb ${thumb || ""}`, text: why });
    }
    const img = el("img", { alt: "", loading: "lazy", class: `t${size}` });
    img.src = `${FILES}/thumbs/${r.sha256}.jpg`;
    const box = el("span", { class: "thumb" }, [img]);
    const c = r.crop;
    if (Array.isArray(c) && c.length === 4 && c.every((v) => typeof v === "number") && r.width > 0 && r.height > 0) {
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

  const errorText = (r) => (r.error_code ? `${r.error_code}${r.error ? `: ${r.error}` : ""}` : "");

  // A column whose every value is empty (no heads, no evidence looked for, no errors, no
  // thumbnails made) takes no room: it is left out of the table altogether.
  const COLUMNS = [
    { key: "image", cell: (i) => thumbnail(i, 96), has: (i) => THUMBS[i] !== null && THUMBS[i] !== undefined },
    { key: "path", text: (r) => r.path, always: true },
    { key: "status", text: (r) => r.status, always: true },
    { key: "score", text: (r) => fmt(r.score) },
    { key: "heads", text: headsText },
    { key: "combined", text: (r) => r.combined || "" },
    { key: "evidence", text: evidenceText },
    { key: "error", text: errorText, class: "code" },
  ];
  let columns = COLUMNS;

  function chooseColumns() {
    columns = COLUMNS.filter((c) => c.always || RECORDS.some((r, i) => (c.has ? c.has(i) : c.text(r) !== "")));
    $("heads").replaceChildren(...columns.map((c) => el("th", { class: `c-${c.key}`, text: c.key })));
  }

  function row(i) {
    const r = RECORDS[i];
    const cells = columns.map((c) => (c.cell ? el("td", { class: `c-${c.key}` }, [c.cell(i)])
      : el("td", { class: `c-${c.key}${c.class ? ` ${c.class}` : ""}`, text: c.text(r) })));
    const tr = el("tr", { "data-index": String(i), class: statusClass(r) }, cells);
    tr.addEventListener("click", () => select(shown.indexOf(i) % PAGE, true));
    return tr;
  }

  // What a tile shows where there is no thumbnail: why.
  function noPicture(i) {
    const r = RECORDS[i];
    const why = { missing: "file not found (see --root)", changed: "file changed since the scan", failed: "no thumbnail (unreadable now)",
      timeout: "no thumbnail (timed out)" }[THUMBS[i]];
    if (why) return why;
    if (r.status === "error") return r.error || r.error_code || "error";
    if (r.status === "skipped") return `skipped: ${r.error_code || "not an image"}`;
    return "no thumbnail";
  }

  function tile(i) {
    const r = RECORDS[i];
    const verdict = typeof r.score === "number" ? `${r.status} ${fmt(r.score)}` : `${r.status}${r.error_code ? ` · ${r.error_code}` : ""}`;
    const tags = [el("span", { class: "badge", text: verdict })];
    if (r.combined && r.combined !== r.status) tags.push(el("span", { class: "tag", text: `${r.combined} by evidence` }));
    else if (evidenceOf(r).length) tags.push(el("span", { class: "tag", text: "evidence" }));
    const figure = el("figure", { "data-index": String(i), class: `tile ${statusClass(r)}`, role: "listitem" }, [
      el("div", { class: "frame" }, [THUMBS[i] === "ok" ? thumbnail(i, "tile") : el("span", { class: `nothumb ${THUMBS[i] || ""}`, text: noPicture(i) })]),
      el("figcaption", {}, [el("div", { class: "tags" }, tags), el("div", { class: "tpath", title: r.path, text: r.path })]),
    ]);
    figure.addEventListener("click", () => select(shown.indexOf(i) % PAGE, true));
    return figure;
  }

  // ---- the page of records: table or gallery, and the detail panel ---------------------------

  const gallery = () => state.view === "gallery";
  const items = () => (gallery() ? $("gallery") : $("rows")).children;

  function drawPage() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    const first = state.page * PAGE;
    const onPage = shown.slice(first, first + PAGE);
    $("results").hidden = gallery();
    $("gallery").hidden = !gallery();
    $("rows").replaceChildren(...(gallery() ? [] : onPage.map(row)));
    $("gallery").replaceChildren(...(gallery() ? onPage.map(tile) : []));
    $("view").textContent = gallery() ? "table" : "gallery";
    $("view").setAttribute("aria-pressed", String(gallery()));
    document.body.setAttribute("data-view", state.view);
    $("pageinfo").textContent = shown.length
      ? `${first + 1}–${Math.min(first + PAGE, shown.length)} of ${shown.length} shown · page ${state.page + 1}/${pages}`
      : "no record matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    if (selected >= 0) select(Math.min(selected, items().length - 1), false);
  }

  function select(position, open) {
    const list = items();
    if (!list.length) return;
    selected = Math.max(0, Math.min(position, list.length - 1));
    for (const item of list) item.classList.remove("sel");
    list[selected].classList.add("sel");
    list[selected].scrollIntoView({ block: "nearest" });
    document.body.setAttribute("data-selected", list[selected].getAttribute("data-index"));
    if (open || !$("detail").hidden) showDetail(Number(list[selected].getAttribute("data-index")));
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
    const evidenceItems = evidenceOf(r).map((e) => el("li", {}, [
      el("b", { text: String(e.kind) }),
      ` ${e.generator || ""}${e.conclusive ? " · conclusive" : ""}${e.valid === false ? " · signature invalid" : ""}`,
      e.detail ? el("div", { class: "detail", text: String(e.detail) }) : "",
    ]));
    $("detail-body").replaceChildren(thumbnail(i, 256), list, evidenceItems.length ? el("ul", { class: "evidence" }, evidenceItems) : "");
    $("detail").hidden = false;
  }

  // Tiles per gallery row: those on the first tile's line.
  function rowLength() {
    const list = items();
    let n = 0;
    while (n < list.length && list[n].offsetTop === list[0].offsetTop) n++;
    return Math.max(1, n);
  }

  function move(step) {
    const next = selected + step;
    const onPage = items().length;
    if (selected < 0) select(0, false);
    else if (next >= onPage && !$("next").disabled) turn(1, 0);
    else if (next < 0 && !$("prev").disabled) turn(-1, PAGE - 1);
    else select(Math.max(0, Math.min(next, onPage - 1)), false);
  }

  function turn(step, position = 0) {
    state.page += step;
    selected = position;
    writeHash();
    drawPage();
  }

  function toggleView() {
    state.view = gallery() ? "table" : "gallery";
    writeHash();
    drawPage();
  }

  function onKey(e) {
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement;
    if (e.key === "Escape") {
      if (e.target === $("q") && $("q").value) { e.preventDefault(); $("q").value = ""; setFilter("q", ""); } // the search cleared, and applied
      $("detail").hidden = true;
      e.target.blur?.();
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const vertical = () => (gallery() ? rowLength() : 1);
    const actions = {
      "/": () => $("q").focus(),
      j: () => move(1), ArrowDown: () => move(vertical()),
      k: () => move(-1), ArrowUp: () => move(-vertical()),
      n: () => !$("next").disabled && turn(1), ArrowRight: () => !$("next").disabled && turn(1),
      p: () => !$("prev").disabled && turn(-1), ArrowLeft: () => !$("prev").disabled && turn(-1),
      g: toggleView,
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
    $("view").addEventListener("click", toggleView);
    $("close").addEventListener("click", () => { $("detail").hidden = true; });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", () => { readHash(); apply(); });
  }

  drawHeader();
  drawFilters();
  drawHistograms();
  chooseColumns();
  wire();
  readHash();
  apply();
  document.body.setAttribute("data-load-ms", performance.now().toFixed(1));
})();
