// streamvj's web page: watch the engine and nudge it. Plain JS, no build step, no CDN.
//
// Controls are generated from the engine's OSCQuery tree (GET /): the same address table
// OSC uses, with each parameter's TYPE, RANGE and VALUE. Changes go back as OSC messages
// written as JSON over one WebSocket (/control), where OSC's own routes check and run
// them. The protocol is described in bridges/control/web_page.py and docs/web.md.
"use strict";

const HISTORY = 120; // samples (one a second) each graph keeps
const GRAPHS = [
  // [title, unit, status fields drawn (first is the headline)]
  ["fps out / in", "", ["fps", "fps_in"]],
  ["latency", "ms", ["latency_ms"]],
  ["skipped", "%", ["skip_pct"]],
  ["VRAM", "MB", ["vram_mb"]],
  ["GPU power", "W", ["gpu_power_w"]],
];
const GROUP_ORDER = ["prompt", "main", "seed", "similarity", "fx", "tempo", "midi", "smoothing"];
const TRANSPORT = ["preset/prev", "preset/next", "reset", "pause", "resume"];

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
let ws = null;
let prefix = "/streamvj";
let writable = false;
let controls = new Map(); // OSC path -> {set(value)}
let history = new Map(); // status field -> [numbers]
let built = false;
let ranges = ""; // the parameters' RANGEs the controls were built with (a preset can change them)
let onAir; // the preset on air, as the last status said
let retryMs = 500;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ---- sending --------------------------------------------------------------------------------

function send(path, args) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ osc: path, args }));
}

// A slider sends at most once per animation frame while dragged (the latest value wins).
function throttled(path) {
  let pending = null;
  return (args) => {
    const first = pending === null;
    pending = args;
    if (first) requestAnimationFrame(() => { send(path, pending); pending = null; });
  };
}

// ---- controls from the OSCQuery tree ---------------------------------------------------------

function leaves(node, out = []) {
  if (node.TYPE !== undefined) out.push(node);
  for (const child of Object.values(node.CONTENTS || {})) leaves(child, out);
  return out;
}

function rel(path) { return path.slice(prefix.length + 1); }

function groupOf(name, names) {
  if (name.includes("/")) return name.split("/")[0];
  // fx_hue joins fx_contrast in "fx"; a word no other parameter starts with stays in "main".
  const head = name.split("_")[0];
  const members = names.filter((n) => !n.includes("/") && (n === head || n.startsWith(head + "_")));
  return members.length > 1 ? head : "main";
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 3 : 1);
}

function slider(node, i, onInput) {
  const r = node.RANGE[i] || {};
  const isInt = node.TYPE[i] === "i";
  const input = el("input", { type: "range", min: r.MIN, max: r.MAX, step: isInt ? 1 : (r.MAX - r.MIN) / 1000 });
  input.dataset.path = node.FULL_PATH;
  input.dataset.index = i;
  const out = el("output");
  input.addEventListener("input", () => { out.textContent = fmt(Number(input.value)); onInput(); });
  return { input, out, set(v) { if (document.activeElement !== input) input.value = v; out.textContent = fmt(v); } };
}

function paramControl(node) {
  const path = node.FULL_PATH;
  const type = node.TYPE;
  const ranges = node.RANGE || [];
  const r = ranges[0] || {};
  const label = el("label", { title: node.DESCRIPTION }, rel(path).split("/").pop());
  const row = el("div", { class: "row" }, label);
  if (type === "T") {
    const box = el("input", { type: "checkbox", dataset: { path } });
    box.addEventListener("change", () => send(path, [box.checked]));
    row.append(box);
    return [row, (v) => { box.checked = Boolean(v); }];
  }
  if (type === "s" && r.VALS) {
    const select = el("select", { dataset: { path } }, ...r.VALS.map((v) => el("option", { value: v }, v)));
    select.addEventListener("change", () => send(path, [select.value]));
    row.append(select);
    return [row, (v) => { select.value = v; }];
  }
  if (type === "s") {
    const text = el("textarea", { rows: 2, dataset: { path }, placeholder: node.DESCRIPTION });
    const apply = el("button", { type: "button" }, "apply");
    const go = () => send(path, [text.value]);
    apply.addEventListener("click", go);
    text.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); go(); } });
    row.classList.add("wide");
    row.append(text, apply);
    return [row, (v) => { if (document.activeElement !== text) text.value = v; }];
  }
  if (type === "i" && (r.MAX === undefined || r.MAX - r.MIN > 10000)) {
    // A seed: a number box and a dice, not a slider over four billion values.
    const num = el("input", { type: "number", min: r.MIN, max: r.MAX, step: 1, dataset: { path } });
    num.addEventListener("change", () => send(path, [Number(num.value)]));
    const dice = el("button", { type: "button", title: "random seed" }, "random");
    dice.addEventListener("click", () => send(path, [Math.floor(Math.random() * ((r.MAX ?? 4294967295) + 1))]));
    row.append(num, dice);
    return [row, (v) => { if (document.activeElement !== num) num.value = v; }];
  }
  // One slider per argument: a float, an int, or t_index_list's one int per step (a preset
  // with another step count changes how many: the sliders follow the value's length).
  let sliders = [];
  const push = throttled(path);
  const collect = () => push(sliders.map((s) => Number(s.input.value)));
  const make = (n) => {
    for (const s of sliders) { s.input.remove(); s.out.remove(); }
    const one = { ...node, TYPE: node.TYPE[0].repeat(n), RANGE: Array(n).fill(ranges[0] || {}) };
    sliders = Array.from({ length: n }, (_, i) => slider(one, i, collect));
    row.append(...sliders.flatMap((s) => [s.input, s.out]));
  };
  make(type.length);
  return [row, (v) => {
    const values = Array.isArray(v) ? v : [v];
    if (values.length !== sliders.length) make(values.length);
    values.forEach((x, i) => sliders[i].set(x));
  }];
}

function blendControl(node) {
  // prompt_blend (text, weight pairs) or seed_blend (seed, weight pairs), sent as one flat list.
  const path = node.FULL_PATH;
  const isPrompt = node.TYPE[0] === "s";
  const rows = el("div", { class: "blend", dataset: { path } });
  const addRow = (item = "", weight = 1) => {
    const what = isPrompt ? el("input", { type: "text", value: item, placeholder: "prompt" })
      : el("input", { type: "number", value: item, min: 0, step: 1, placeholder: "seed" });
    const w = el("input", { type: "range", min: 0, max: 2, step: 0.01, value: weight });
    const out = el("output", {}, fmt(Number(weight)));
    w.addEventListener("input", () => { out.textContent = fmt(Number(w.value)); });
    const drop = el("button", { type: "button", title: "remove" }, "×");
    const line = el("div", { class: "blend-row" }, what, w, out, drop);
    drop.addEventListener("click", () => line.remove());
    rows.append(line);
  };
  const apply = el("button", { type: "button" }, "apply blend");
  apply.addEventListener("click", () => {
    const args = [];
    for (const line of rows.children) {
      const [what, w] = line.querySelectorAll("input");
      if (isPrompt ? what.value.trim() === "" : what.value === "") continue;
      args.push(isPrompt ? what.value : Number(what.value), Number(w.value));
    }
    send(path, args); // empty: back to the plain prompt / seed
  });
  const add = el("button", { type: "button" }, "+ row");
  add.addEventListener("click", () => addRow());
  const row = el("div", { class: "row wide" }, el("label", { title: node.DESCRIPTION }, rel(path)), rows, add, apply);
  return [row, (v) => {
    if (rows.contains(document.activeElement)) return;
    rows.replaceChildren();
    for (const [item, weight] of v || []) addRow(item, weight);
  }];
}

function commandControl(node) {
  // Write-only commands: a button, with a field per argument when it takes any.
  const path = node.FULL_PATH;
  const button = el("button", { type: "button", title: node.DESCRIPTION, dataset: { path } }, rel(path).split("/").pop());
  if (node.TYPE === "N") {
    button.addEventListener("click", () => send(path, []));
    return el("div", { class: "row" }, button);
  }
  const fields = [...node.TYPE].map((t, i) => {
    const r = (node.RANGE || [])[i] || {};
    if (r.VALS) return el("select", {}, ...r.VALS.map((v) => el("option", { value: v }, v)));
    const hint = r.MIN !== undefined && r.MAX !== undefined ? `${r.MIN} … ${r.MAX}` : { s: "text", i: "integer", f: "number" }[t];
    return el("input", { type: t === "s" ? "text" : "number", min: r.MIN, max: r.MAX, step: t === "i" ? 1 : "any",
      placeholder: hint, title: node.DESCRIPTION });
  });
  button.addEventListener("click", () => {
    const given = fields.findIndex((f) => f.value === ""); // optional arguments come last
    const used = given < 0 ? fields : fields.slice(0, given);
    send(path, used.map((f, i) => (node.TYPE[i] === "s" ? f.value : Number(f.value))));
  });
  return el("div", { class: "row" }, button, ...fields);
}

function build(tree) {
  const nodes = leaves(tree).filter((n) => n.FULL_PATH.startsWith(prefix + "/"));
  const names = nodes.map((n) => rel(n.FULL_PATH));
  const groups = new Map(GROUP_ORDER.map((g) => [g, []]));
  const buttons = new Map();
  for (const node of nodes) {
    const name = rel(node.FULL_PATH);
    if (TRANSPORT.includes(name)) { buttons.set(name, commandControl(node).firstChild); continue; }
    if (name === "preset/load") continue; // the preset list is its control
    let row;
    if (node.VALUE !== undefined) {
      let set;
      [row, set] = paramControl(node);
      controls.set(node.FULL_PATH, { set });
      set(node.TYPE.length > 1 ? node.VALUE : node.VALUE[0]);
    } else if (node.ACCESS === 2 && !name.includes("/")) {
      let set;
      [row, set] = blendControl(node);
      controls.set(node.FULL_PATH, { set });
    } else {
      row = commandControl(node);
    }
    const group = groupOf(name, names);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(row);
  }
  $("transport").replaceChildren(...TRANSPORT.filter((n) => buttons.has(n)).map((n) => buttons.get(n)));
  const target = $("groups");
  target.replaceChildren();
  for (const [group, rows] of groups) {
    if (!rows.length) continue;
    const box = el("details", { class: "panel", open: group !== "smoothing" && group !== "midi" },
      el("summary", {}, group === "main" ? "parameters" : group), ...rows);
    target.append(box);
  }
  ranges = rangesOf(tree);
  built = true;
}

function rangesOf(tree) {
  return JSON.stringify(leaves(tree).map((n) => [n.FULL_PATH, n.RANGE]));
}

async function rebuildIfRangesChanged() {
  // A preset holds some parameters to its own choices (a ControlNet's listed sources and
  // preprocessors, OSCQuery's VALS): after a switch the menus must offer the new preset's.
  const tree = await (await fetch("/", { headers: { Accept: "application/json" } })).json();
  if (rangesOf(tree) !== ranges) build(tree);
}

// ---- what the engine says ----------------------------------------------------------------------

function setValue(path, value) {
  const control = controls.get(path);
  if (control) control.set(value);
}

function showPresets(doc) {
  const list = $("preset-list");
  list.replaceChildren(...doc.names.map((name) => {
    const b = el("button", { type: "button", dataset: { preset: name }, class: name === doc.current ? "current" : "" }, name);
    b.addEventListener("click", () => send(`${prefix}/preset/load`, [name]));
    return el("li", {}, b);
  }));
  $("preset-name").textContent = doc.current || "";
}

function showStatus(s) {
  $("state").textContent = s.state || "?";
  $("state").className = `badge ${s.state || ""}`;
  if (s.preset !== undefined) {
    if (built && onAir !== undefined && s.preset !== onAir) rebuildIfRangesChanged().catch(() => {});
    onAir = s.preset;
    $("preset-name").textContent = s.preset;
    for (const b of document.querySelectorAll("#preset-list button")) b.classList.toggle("current", b.dataset.preset === s.preset);
  }
  $("backend").textContent = s.backend || "";
  $("numbers").textContent = `${(s.fps ?? 0).toFixed(1)} fps · ${(s.latency_ms ?? 0).toFixed(1)} ms`;
  const err = $("status-error");
  err.hidden = !s.error;
  err.textContent = s.error || "";
  const sample = { ...s, skip_pct: 100 * (s.skip_ratio ?? 0) };
  for (const [, , fields] of GRAPHS) {
    for (const f of fields) {
      const h = history.get(f) || [];
      h.push(typeof sample[f] === "number" ? sample[f] : null);
      if (h.length > HISTORY) h.shift();
      history.set(f, h);
    }
  }
  drawGraphs();
}

function drawGraphs() {
  const box = $("graphs");
  if (!box.children.length) {
    for (const [title, unit] of GRAPHS) {
      box.append(el("figure", { class: "graph" }, el("canvas", { width: 240, height: 60 }),
        el("figcaption", {}, el("span", {}, title), " ", el("b", {}, "–"), unit ? ` ${unit}` : "")));
    }
  }
  GRAPHS.forEach(([, , fields], i) => {
    const fig = box.children[i];
    const canvas = fig.querySelector("canvas");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const series = fields.map((f) => history.get(f) || []);
    const nums = series.flat().filter((v) => v !== null);
    const last = series[0][series[0].length - 1];
    fig.querySelector("b").textContent = last === null || last === undefined ? "n/a" : fmt(last);
    if (!nums.length) return;
    const top = Math.max(...nums) * 1.1 || 1;
    series.forEach((s, k) => {
      ctx.strokeStyle = k === 0 ? "#7fd1ff" : "#ffb86b";
      ctx.beginPath();
      let drawing = false;
      s.forEach((v, x) => {
        if (v === null) { drawing = false; return; }
        const px = ((HISTORY - s.length + x) / (HISTORY - 1)) * canvas.width; // the newest at the right
        const py = canvas.height - (v / top) * (canvas.height - 4) - 2;
        if (drawing) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        drawing = true;
      });
      ctx.stroke();
    });
  });
}

function showErrors(errors) {
  $("error-list").replaceChildren(...errors.slice().reverse().map((e) => el("li", { class: e.level },
    el("time", {}, new Date(e.t * 1000).toLocaleTimeString()), " ", e.text)));
}

function notice(text) {
  const list = $("error-list");
  list.prepend(el("li", { class: "refused" }, el("time", {}, new Date().toLocaleTimeString()), " ", text));
}

const previewCounts = { o: 0, i: 0 };
const previewUrls = {};
function showPreview(data) {
  const tag = String.fromCharCode(new Uint8Array(data, 0, 1)[0]);
  const kind = tag === "o" ? "output" : "input";
  const url = URL.createObjectURL(new Blob([data.slice(1)], { type: "image/jpeg" }));
  const img = $(`preview-${kind}`);
  const old = previewUrls[kind];
  img.onload = () => { if (old) URL.revokeObjectURL(old); };
  img.src = url;
  previewUrls[kind] = url;
  previewCounts[tag] += 1;
  $(`preview-${kind}-count`).textContent = previewCounts[tag];
}

function wantPreview() {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ preview: $("preview-on").checked && !document.hidden }));
  }
}

// ---- connection --------------------------------------------------------------------------------

async function onHello(msg) {
  prefix = msg.prefix;
  writable = msg.writable;
  $("readonly").hidden = writable;
  if (!built) {
    const tree = await (await fetch("/", { headers: { Accept: "application/json" } })).json();
    build(tree);
  }
  for (const [path, value] of Object.entries(msg.values)) setValue(path, value);
  showPresets(msg.presets);
  if (msg.status) showStatus(msg.status);
  showErrors(msg.errors);
  $("controls").disabled = !writable;
  wantPreview();
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/control${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let ready = false;
  const early = [];
  ws.onopen = () => { $("link").textContent = "connected"; retryMs = 500; };
  ws.onmessage = async (ev) => {
    if (typeof ev.data !== "string") { showPreview(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") {
      await onHello(msg);
      ready = true;
      early.splice(0).forEach(handle);
    } else if (!ready) early.push(msg);
    else handle(msg);
  };
  ws.onclose = () => {
    $("link").textContent = "disconnected: retrying";
    $("controls").disabled = true;
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 5000);
  };
}

function handle(msg) {
  if (msg.type === "value") setValue(msg.path, msg.value);
  else if (msg.type === "status") showStatus(msg);
  else if (msg.type === "presets") showPresets(msg);
  else if (msg.type === "errors") showErrors(msg.errors);
  else if (msg.type === "refused") notice(`refused ${msg.address || "message"}: ${msg.reason}`);
}

$("preview-on").addEventListener("change", wantPreview);
document.addEventListener("visibilitychange", wantPreview);
connect();
