// The format report (GET /v1/models/{id}/report) drawn with Chart.js (vendored: ../vendor/chart.js).
// One mark per report row that has the number: latency (p50 and p99 bars), size, validation error
// (log scale), latency against size (the Pareto front the report marks, joined) and load time.

import { fmtBytes, fmtErr, fmtMs } from "./dom.js";

const Chart = window.Chart;
Chart.defaults.animation = false; // drawn at once: nothing moves (and the test counts marks right away)
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.family = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
Chart.defaults.font.size = 12;
Chart.defaults.color = "#1f2933";

const FORMAT_COLORS = {
  onnx: "#2f6fdb", openvino: "#7b3fb8", tflite: "#c96a00", torchscript: "#c23b3b", torch_export: "#b5478f",
  safetensors: "#1f8a5f", pytorch: "#8a5a2b", coreml: "#4f5b66", tensorrt: "#4d8a12", savedmodel: "#a0522d",
  keras: "#9b2c2c",
};
const EXTRA = ["#0f766e", "#6d28d9", "#b45309", "#be123c", "#1d4ed8"];
const PRECISION_ALPHA = { fp32: 1, exact: 1, fp16: 0.72, bf16: 0.72, int8: 0.48 };

function hex(fmt) {
  if (FORMAT_COLORS[fmt]) return FORMAT_COLORS[fmt];
  let h = 0;
  for (const c of fmt) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return EXTRA[h % EXTRA.length];
}

export function color(fmt, precision, alpha) {
  const a = alpha ?? PRECISION_ALPHA[precision] ?? 0.85;
  const n = parseInt(hex(fmt).slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

// "onnx fp16", with the artifact's short id when two rows would read the same
export function labels(rows) {
  const base = rows.map((r) => `${r.format} ${r.precision}`);
  return rows.map((r, i) => (base.filter((b) => b === base[i]).length > 1 ? `${base[i]} · ${r.artifact_id.slice(0, 8)}` : base[i]));
}

function draw(id, config, summary) {
  const canvas = document.getElementById(id);
  const old = Chart.getChart(canvas);
  if (old) old.destroy();
  document.getElementById(`${id}-desc`).textContent = summary;
  const chart = new Chart(canvas, config);
  canvas.closest("figure").dataset.marks = String(marks(chart));
  return chart;
}

// the marks a chart drew: its elements, dataset by dataset
export function marks(chart) {
  return chart.data.datasets.reduce((n, _, i) => n + chart.getDatasetMeta(i).data.length, 0);
}

// decimal units for a log axis of bytes (its ticks fall on powers of ten)
function fmtSize(v) {
  const n = Number(v);
  if (n >= 1e9) return `${n / 1e9} GB`;
  if (n >= 1e6) return `${n / 1e6} MB`;
  if (n >= 1e3) return `${n / 1e3} kB`;
  return `${n} B`;
}

// log-axis ticks at powers of ten only (Chart.js labels every 1..9 times one otherwise)
function logTick(fmt, steps = [1]) {
  return (v) => {
    const m = Number(v) / 10 ** Math.floor(Math.log10(Number(v)) + 1e-9);
    return steps.some((s) => Math.abs(m - s) < 1e-6) ? fmt(v) : "";
  };
}

// a log axis with room around the marks (Chart.js puts the largest one on the frame otherwise)
function logRange(values) {
  const pos = values.filter((v) => v > 0);
  if (!pos.length) return {};
  return { min: 10 ** Math.floor(Math.log10(Math.min(...pos)) - 0.15), max: 10 ** Math.ceil(Math.log10(Math.max(...pos)) + 0.15) };
}

function logFloor(values) {
  const pos = values.filter((v) => v > 0);
  const min = pos.length ? Math.min(...pos) : 1e-8;
  return 10 ** (Math.floor(Math.log10(min)) - 1);
}

function bar(id, rows, value, { title, unit, fmt, log = false, ticks = null, summaryUnit = "" }) {
  const have = rows.filter((r) => value(r) !== null && value(r) !== undefined);
  const names = labels(have);
  const data = have.map(value);
  return draw(id, {
    type: "bar",
    data: {
      labels: names,
      datasets: [{
        label: title, data,
        backgroundColor: have.map((r) => color(r.format, r.precision)),
        borderColor: have.map((r) => color(r.format, r.precision, 1)), borderWidth: 1,
      }],
    },
    options: {
      plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => `${title}: ${fmt(c.raw)}` } } },
      scales: {
        x: { ticks: { autoSkip: false, maxRotation: 40 } },
        y: { type: log ? "logarithmic" : "linear", beginAtZero: !log, title: { display: true, text: unit },
             ticks: { callback: log ? logTick(fmt) : ticks || ((v) => fmt(v)) } },
      },
    },
  }, have.length ? have.map((r, i) => `${names[i]}: ${fmt(data[i])}${summaryUnit}`).join("; ") : "nothing measured yet");
}

function latency(rows) {
  const have = rows.filter((r) => r.p50_ms !== null);
  const names = labels(have);
  return draw("chart-latency", {
    type: "bar",
    data: {
      labels: names,
      datasets: [
        { label: "p50", data: have.map((r) => r.p50_ms), backgroundColor: "#2f6fdb", borderColor: "#1d4ea3", borderWidth: 1 },
        { label: "p99", data: have.map((r) => r.p99_ms), backgroundColor: "#a9c4f2", borderColor: "#2f6fdb", borderWidth: 1 },
      ],
    },
    options: {
      plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmtMs(c.raw)} ms` } } },
      scales: {
        x: { ticks: { autoSkip: false, maxRotation: 40 } },
        y: { type: "logarithmic", ...logRange(have.flatMap((r) => [r.p50_ms, r.p99_ms])),
             title: { display: true, text: "ms (log scale)" }, ticks: { callback: logTick(fmtMs) } },
      },
    },
  }, have.length ? have.map((r, i) => `${names[i]}: p50 ${fmtMs(r.p50_ms)} ms, p99 ${fmtMs(r.p99_ms)} ms`).join("; ")
    : "nothing measured yet");
}

function error(rows) {
  const have = rows.filter((r) => r.max_abs_err !== null);
  const names = labels(have);
  const floor = logFloor(have.map((r) => r.max_abs_err));
  return draw("chart-error", {
    type: "bar",
    data: {
      labels: names,
      datasets: [{
        label: "max abs error",
        data: have.map((r) => (r.max_abs_err > 0 ? r.max_abs_err : floor)),
        backgroundColor: have.map((r) => (r.validation !== "passed" ? "rgba(200, 30, 30, 0.85)"
          : r.max_abs_err === 0 ? "rgba(120, 130, 140, 0.6)" : color(r.format, r.precision))),
        borderWidth: 0,
      }],
    },
    options: {
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (c) => `max abs error ${fmtErr(have[c.dataIndex].max_abs_err)} (validation ${have[c.dataIndex].validation})` } },
      },
      scales: {
        x: { ticks: { autoSkip: false, maxRotation: 40 } },
        y: { type: "logarithmic", min: floor / 10, max: logRange(have.map((r) => r.max_abs_err)).max,
             title: { display: true, text: "max abs error (log scale)" },
             ticks: { callback: logTick((v) => (Math.abs(v - floor) < floor * 1e-6 ? "exact" : Number(v).toExponential(0))) } },
      },
    },
  }, have.length ? have.map((r, i) => `${names[i]}: ${fmtErr(r.max_abs_err)}, validation ${r.validation}`).join("; ")
    : "nothing validated yet");
}

function pareto(rows) {
  const measured = rows.filter((r) => r.p50_ms !== null);
  const names = new Map(labels(rows).map((l, i) => [rows[i].artifact_id, l]));
  const point = (r) => ({ x: r.size_bytes, y: r.p50_ms, label: names.get(r.artifact_id) });
  const proven = measured.filter((r) => r.deployable);
  const unproven = measured.filter((r) => !r.deployable);
  const front = proven.filter((r) => r.pareto).sort((a, b) => a.size_bytes - b.size_bytes);
  const datasets = [
    { label: "validated", data: proven.map(point), pointRadius: 5, pointHoverRadius: 7,
      backgroundColor: proven.map((r) => color(r.format, r.precision)), borderColor: "#1f2933", borderWidth: 1 },
    { label: "Pareto front", data: front.map(point), showLine: true, borderColor: "#d4380d", borderWidth: 2,
      backgroundColor: "rgba(212, 56, 13, 0.15)", pointStyle: "rectRot", pointRadius: 8, pointHoverRadius: 9 },
  ];
  if (unproven.length) {
    datasets.push({ label: "not validated", data: unproven.map(point), pointRadius: 5, pointStyle: "crossRot",
      borderColor: "rgba(200, 30, 30, 0.9)", borderWidth: 2 });
  }
  const summary = measured.length
    ? `${measured.map((r) => `${names.get(r.artifact_id)}: ${fmtBytes(r.size_bytes)}, p50 ${fmtMs(r.p50_ms)} ms`).join("; ")}. `
      + `Pareto front: ${front.map((r) => names.get(r.artifact_id)).join(", ") || "none"}.`
    : "nothing measured yet";
  return draw("chart-pareto", {
    type: "scatter",
    data: { datasets },
    options: {
      plugins: {
        tooltip: { callbacks: { label: (c) => `${c.raw.label}: ${fmtBytes(c.raw.x)}, p50 ${fmtMs(c.raw.y)} ms` } },
      },
      scales: {
        x: { type: "logarithmic", ...logRange(measured.map((r) => r.size_bytes)),
             title: { display: true, text: "size (log scale)" }, ticks: { callback: logTick(fmtSize) } },
        y: { type: "logarithmic", ...logRange(measured.map((r) => r.p50_ms)),
             title: { display: true, text: "p50 ms (log scale)" }, ticks: { callback: logTick(fmtMs) } },
      },
    },
  }, summary);
}

export function drawReport(report) {
  const rows = report.rows;
  return {
    latency: latency(rows),
    size: bar("chart-size", rows, (r) => r.size_bytes, { title: "size", unit: "size", fmt: fmtBytes }),
    error: error(rows),
    pareto: pareto(rows),
    load: bar("chart-load", rows, (r) => r.load_ms, { title: "load", unit: "ms", fmt: (v) => `${fmtMs(v)} ms`, ticks: (v) => v }),
  };
}
