// Small DOM and number helpers. Every value from the API goes into the page as text (never as HTML).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  for (const u of units) {
    if (v < 1024 || u === "GiB") return u === "B" ? `${Math.round(v)} B` : `${v.toFixed(1)} ${u}`;
    v /= 1024;
  }
  return `${n} B`;
}

export function fmtMs(v) {
  if (v === null || v === undefined) return "—";
  if (v < 1) return v.toFixed(3);
  if (v < 100) return v.toFixed(2);
  return v.toFixed(0);
}

export function fmtErr(v) {
  if (v === null || v === undefined) return "—";
  return v === 0 ? "0 (exact)" : v.toExponential(2);
}

export function fmtNum(v, digits = 0) {
  if (v === null || v === undefined) return "—";
  return Number(v).toLocaleString("en", { maximumFractionDigits: digits });
}

export function fmtShape(shape) {
  if (shape === null || shape === undefined) return "unknown";
  return `[${shape.map((d) => (d === null ? "?" : d)).join(", ")}]`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

export function seconds(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso) : new Date();
  return Math.max(0, (end - new Date(startIso)) / 1000);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "—";
}

export function badge(status) {
  return el("span", { class: `badge badge-${String(status).replace(/[^a-z_]/gi, "_")}`, text: status });
}

// a message in a live region: kind is "info" | "ok" | "error"
export function say(node, text, kind = "info") {
  node.textContent = text;
  node.dataset.kind = kind;
}
