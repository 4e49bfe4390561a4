// /ui/models/{id}: one model, all of it from the public API —
//   GET  /v1/models/{id}                 summary and inspection (inputs, outputs, params, safety)
//   GET  /v1/formats                     the convert form's targets and precisions (the declared edges)
//   POST /v1/models/{id}/conversions     convert;  POST /v1/models/{id}/report-all   every format
//   GET  /v1/jobs?model_id=…             jobs, polled every second while one is not finished
//   GET  /v1/jobs/{id}/logs              logs;     POST /v1/jobs/{id}/cancel
//   GET  /v1/models/{id}/artifacts       artifacts with their validation and benchmark
//   GET  /v1/models/{id}/report          the format report: charts, recommendations, the numbers
//   POST /v1/deployments, GET /v1/deployments, GET /v1/models/{id}/example-inputs,
//   POST /v1/deployments/{name}/predict  deploy and try a prediction

import { api, boot, canWrite } from "./api.js";
import { drawReport, labels } from "./charts.js";
import {
  $, badge, clear, el, fmtBytes, fmtErr, fmtMs, fmtNum, fmtShape, fmtTime, say, seconds, shortId,
} from "./dom.js";

const modelId = document.body.dataset.modelId;
const base = `/v1/models/${encodeURIComponent(modelId)}`;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const st = {
  model: null, formats: null, jobs: new Map(), order: "", jobSig: null, artifacts: [], report: null,
  deployments: [], timer: null, wired: false, sourceChosen: false,
};

// ------------------------------------------------------------------------------------------ model

function dlRow(dl, term, value) {
  dl.append(el("div", {}, el("dt", { text: term }), el("dd", {}, value)));
}

function ioRows(tbody, specs) {
  clear(tbody);
  if (!specs || !specs.length) {
    tbody.append(el("tr", {}, el("td", { colspan: "3", text: "not recorded in the file" })));
    return;
  }
  for (const s of specs) {
    tbody.append(el("tr", {}, el("th", { scope: "row" }, el("code", { text: s.name })),
      el("td", { text: s.dtype || "unknown" }), el("td", { text: fmtShape(s.shape) })));
  }
}

function value(v) {
  if (Array.isArray(v)) return v.length ? el("ul", { class: "plain" }, v.map((x) => el("li", {}, el("code", { text: typeof x === "string" ? x : JSON.stringify(x) })))) : "none";
  if (v && typeof v === "object") return el("code", { text: JSON.stringify(v) });
  return String(v);
}

function renderModel(m) {
  const insp = m.inspection || {};
  document.title = `${m.name} · modelport`;
  $("#model-name").textContent = m.name;
  $("#crumb-name").textContent = m.name;
  const dl = clear($("#model-summary"));
  dlRow(dl, "Format", `${m.format_title || m.format}`);
  dlRow(dl, "Size", fmtBytes(m.size_bytes));
  dlRow(dl, "Parameters", fmtNum(insp.params));
  dlRow(dl, "Files", `${m.file_count} (${m.files.map((f) => f.path).join(", ")})`);
  dlRow(dl, "Uploaded", fmtTime(m.created_at));
  dlRow(dl, "Digest", el("code", { text: m.digest.slice(0, 16), title: m.digest }));
  dlRow(dl, "Id", el("code", { text: m.id }));
  if (insp.detected_by) dlRow(dl, "Detected by", insp.detected_by);
  ioRows($("#inputs-table tbody"), insp.inputs);
  ioRows($("#outputs-table tbody"), insp.outputs);
  const safety = insp.safety || {};
  const box = clear($("#safety"));
  box.append(el("p", {}, badge(safety.status || "unknown"), " ", safety.method || safety.message || ""));
  const rest = Object.entries(safety).filter(([k]) => !["status", "method"].includes(k));
  if (rest.length) {
    const sdl = el("dl", { class: "findings" });
    for (const [k, v] of rest) sdl.append(el("dt", { text: k.replaceAll("_", " ") }), el("dd", {}, value(v)));
    box.append(sdl);
  }
  const warnings = clear($("#warnings"));
  const all = [...(m.warnings || []), ...(insp.warnings || [])].filter((w, i, a) => a.indexOf(w) === i);
  if (!all.length) warnings.append(el("li", { text: "none" }));
  for (const w of all) warnings.append(el("li", { text: typeof w === "string" ? w : JSON.stringify(w) }));
  $("#inspection-json").textContent = JSON.stringify(insp, null, 2);
  const name = $("#deploy-name");
  if (!name.value) name.value = m.name.replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 128) || "model";
}

// ---------------------------------------------------------------------------------- convert form

function reachable(source, edges) {
  const seen = new Set();
  const queue = [source];
  while (queue.length) {
    const s = queue.shift();
    for (const e of edges) {
      if (e.source === s && !seen.has(e.target)) {
        seen.add(e.target);
        if (e.target !== source) queue.push(e.target);
      }
    }
  }
  return seen; // the source itself only through an edge of its own (another precision of it)
}

function fillTargets() {
  const { formats, edges } = st.formats;
  const titles = new Map(formats.map((f) => [f.name, f.title]));
  const select = clear($("#convert-target"));
  const targets = [...reachable(st.model.format, edges)].sort();
  for (const t of targets) {
    const into = edges.filter((e) => e.target === t);
    const live = into.some((e) => e.worker_available);
    const text = `${titles.get(t) || t}${t === st.model.format ? " (the same format, another precision)" : ""}${live ? "" : " — no worker now"}`;
    select.append(el("option", { value: t, text }));
  }
  if (!targets.length) select.append(el("option", { value: "", text: "no format is reachable from this one", disabled: true }));
  fillPrecisions();
}

function fillPrecisions() {
  const target = $("#convert-target").value;
  const select = clear($("#convert-precision"));
  const enums = new Set();
  for (const e of st.formats.edges.filter((x) => x.target === target)) {
    const p = e.options && e.options.properties && e.options.properties.precision;
    for (const v of (p && p.enum) || []) enums.add(v);
  }
  if (!enums.size) select.append(el("option", { value: "", text: "as the edge does it" }));
  for (const v of enums) select.append(el("option", { value: v, text: v }));
  const into = st.formats.edges.filter((x) => x.target === target && x.source === st.model.format);
  $("#convert-hint").textContent = into.length
    ? into.map((e) => `${e.name}: ${e.description}`).join(" ") : (target ? `reached through another format first` : "");
}

function benchmark() {
  if (!$("#bench-on").checked) return false;
  const s = Number($("#bench-seconds").value);
  return Number.isFinite(s) && s > 0 ? { max_seconds: s } : true;
}

async function convert(e) {
  e.preventDefault();
  const status = $("#actions-status");
  const target = $("#convert-target").value;
  const precision = $("#convert-precision").value;
  const body = { target, benchmark: benchmark() };
  if (precision) body.options = { precision };
  $("#convert-button").disabled = true;
  try {
    const job = await api(`${base}/conversions`, { method: "POST", json: body });
    say(status, `Job ${shortId(job.id)} (${target}${precision ? ` ${precision}` : ""}): ${job.status}.`, "ok");
    await refreshJobs();
  } catch (err) {
    say(status, `Convert refused (${err.status}): ${err.message}`, "error");
  } finally {
    $("#convert-button").disabled = !canWrite();
  }
}

async function reportAll() {
  const status = $("#actions-status");
  const button = $("#report-all-button");
  button.disabled = true;
  say(status, "Asking for every format…");
  try {
    const r = await api(`${base}/report-all`, { method: "POST", json: { benchmark: benchmark() } });
    const what = r.jobs.map(targetOf).join(", ");
    say(status, `Report-all: ${r.jobs.length} job(s)${what ? ` (${what})` : ""}; ${r.skipped.length} left out.`, "ok");
    const list = clear($("#skipped"));
    for (const s of r.skipped) {
      list.append(el("li", {}, el("strong", { text: `${targetOf(s)} left out: ` }), s.reason));
    }
    await refreshJobs();
  } catch (err) {
    say(status, `Report-all refused (${err.status}): ${err.message}`, "error");
  } finally {
    button.disabled = !canWrite();
  }
}

// ------------------------------------------------------------------------------------------- jobs

function targetOf(job) {
  const p = job.options && job.options.precision;
  const cal = job.options && job.options.calibration;
  const how = !cal || cal === "none" ? "" : ` (calibrated on ${cal.startsWith("upload:") ? "an uploaded set" : cal})`;
  return `${job.target}${p ? ` ${p}` : ""}${how}`;
}

function stepText(job) {
  const steps = job.steps || [];
  if (job.status === "succeeded") return `all ${steps.length} steps done`;
  const i = steps.findIndex((s) => s.status !== "succeeded");
  if (i < 0) return `${steps.length} steps`;
  const s = steps[i];
  return `${s.edge || s.kind} (${i + 1}/${steps.length}): ${s.status}${s.error ? ` — ${s.error}` : ""}`;
}

function jobEntry(job) {
  let e = st.jobs.get(job.id);
  if (!e) {
    const logsBtn = el("button", { type: "button", class: "secondary small", "aria-expanded": "false",
      "aria-controls": `logs-${job.id}`, text: "Logs" });
    const cancelBtn = el("button", { type: "button", class: "secondary small", text: "Cancel" });
    const cells = { status: el("td", { class: "status" }), step: el("td"), started: el("td"), took: el("td", { class: "num" }) };
    const row = el("tr", { dataset: { jobId: job.id } },
      el("th", { scope: "row" }, el("code", { text: shortId(job.id), title: job.id })),
      el("td", { text: targetOf(job) }), cells.status, cells.step, cells.started, cells.took,
      el("td", { class: "actions" }, logsBtn, " ", cancelBtn));
    const pre = el("pre", { class: "logs", tabindex: "0", "aria-label": `Logs of job ${shortId(job.id)}` });
    const logsRow = el("tr", { id: `logs-${job.id}`, class: "logs-row", hidden: true }, el("td", { colspan: "7" }, pre));
    e = { row, logsRow, pre, cells, logsBtn, cancelBtn, open: false, status: null, logged: null };
    logsBtn.addEventListener("click", () => toggleLogs(e));
    cancelBtn.addEventListener("click", () => cancelJob(e));
    st.jobs.set(job.id, e);
  }
  e.job = job;
  if (e.status !== job.status) {
    clear(e.cells.status).append(badge(job.status));
    e.row.dataset.status = job.status;
    e.status = job.status;
  }
  e.cells.step.textContent = stepText(job);
  e.cells.started.textContent = fmtTime(job.started_at || job.created_at);
  const took = seconds(job.started_at, job.finished_at);
  e.cells.took.textContent = took === null ? "—" : `${took.toFixed(1)} s`;
  e.cancelBtn.hidden = TERMINAL.has(job.status) || !canWrite();
  return e;
}

async function toggleLogs(e) {
  e.open = !e.open;
  e.logsRow.hidden = !e.open;
  e.logsBtn.setAttribute("aria-expanded", String(e.open));
  e.logsBtn.textContent = e.open ? "Hide logs" : "Logs";
  if (e.open) await loadLogs(e);
}

async function loadLogs(e) {
  try {
    const text = await api(`/v1/jobs/${encodeURIComponent(e.job.id)}/logs`, { as: "text" });
    const head = e.job.error ? `job ${e.job.status}: ${e.job.error}\n\n` : "";
    e.pre.textContent = head + (text || "(no log lines yet)");
    e.logged = e.job.status;
  } catch (err) {
    e.pre.textContent = `logs unavailable: ${err.message}`;
  }
}

async function cancelJob(e) {
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(e.job.id)}/cancel`, { method: "POST" });
    jobEntry(job);
    say($("#actions-status"), `Cancel of job ${shortId(job.id)} asked: ${job.status}.`, "ok");
  } catch (err) {
    say($("#actions-status"), `Cancel refused: ${err.message}`, "error");
  }
}

async function refreshJobs() {
  const { items } = await api(`/v1/jobs?model_id=${encodeURIComponent(modelId)}&limit=200`);
  const entries = items.map(jobEntry);
  const order = items.map((j) => j.id).join(",");
  if (order !== st.order) { // re-order only when the set changed: rows keep their focus otherwise
    const body = $("#jobs-table tbody");
    for (const e of entries) body.append(e.row, e.logsRow);
    st.order = order;
  }
  for (const e of entries) {
    if (e.open && (!TERMINAL.has(e.job.status) || e.logged !== e.job.status)) loadLogs(e);
  }
  const counts = {};
  for (const j of items) counts[j.status] = (counts[j.status] || 0) + 1;
  const summary = items.length ? Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ") : "No jobs yet.";
  if ($("#jobs-summary").textContent !== summary) $("#jobs-summary").textContent = summary;
  const sig = items.map((j) => `${j.id}:${j.status}:${j.steps.map((s) => s.status).join("")}`).join("|");
  if (sig !== st.jobSig) { // a step moved: artifacts, checks and the report may have changed
    st.jobSig = sig;
    await refreshResults();
  }
  if (items.some((j) => !TERMINAL.has(j.status))) schedule();
}

function schedule() {
  if (st.timer) return;
  st.timer = setTimeout(async () => {
    st.timer = null;
    try {
      await refreshJobs();
    } catch (err) {
      say($("#jobs-summary"), `Could not refresh the jobs (${err.message}); trying again.`, "error");
      schedule();
    }
  }, 1000);
}

// ------------------------------------------------------------------------------ artifacts, report

// artifact id -> its label in the charts ("onnx fp16", with the short id where two would read the same)
function rowLabels() {
  const rows = st.report ? st.report.rows : [];
  return new Map(labels(rows).map((l, i) => [rows[i].artifact_id, l]));
}

async function download(path, filename) {
  const blob = await api(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

function pickForDeploy(artifactId) {
  const select = $("#deploy-source");
  select.value = `artifact:${artifactId}`;
  st.sourceChosen = true;
  $("#deploy").scrollIntoView({ block: "start" });
  $("#deploy-name").focus();
}

function renderArtifacts() {
  const body = clear($("#artifacts-table tbody"));
  const rows = new Map((st.report ? st.report.rows : []).map((r) => [r.artifact_id, r]));
  for (const a of st.artifacts) {
    const r = rows.get(a.id) || {};
    const v = a.validation;
    const deployBtn = el("button", { type: "button", class: "small", text: "Deploy", disabled: !a.deployable || !canWrite(),
      title: a.deployable ? "deploy this artifact" : "only artifacts whose validation passed can be deployed" });
    deployBtn.addEventListener("click", () => pickForDeploy(a.id));
    const fname = a.file_count === 1 ? a.primary_file.split("/").pop() : `artifact-${a.id}.zip`;
    const dlBtn = el("button", { type: "button", class: "secondary small", text: "Download" });
    dlBtn.addEventListener("click", () => download(`/v1/artifacts/${a.id}/download`, fname).catch((err) =>
      say($("#artifacts-summary"), `Download failed: ${err.message}`, "error")));
    body.append(el("tr", { dataset: { artifactId: a.id } },
      el("th", { scope: "row" }, el("code", { text: shortId(a.id), title: a.id }), el("div", { class: "hint", text: a.lineage.edge || "" })),
      el("td", { text: a.format }),
      el("td", { text: r.precision || (a.lineage.options && a.lineage.options.precision) || "—" }),
      el("td", { class: "num", text: fmtBytes(a.size_bytes) }),
      el("td", {}, badge(v ? v.status : "not validated"), v && v.reason ? el("div", { class: "hint", text: v.reason }) : null),
      el("td", { class: "num", text: fmtErr(v ? v.max_abs_err : null) }),
      el("td", { class: "num", text: fmtMs(a.benchmark ? a.benchmark.p50_ms : null) }),
      el("td", { class: "actions" }, deployBtn, " ", dlBtn)));
  }
  const n = st.artifacts.length;
  $("#artifacts-summary").textContent = n ? `${n} artifact(s); ${st.artifacts.filter((a) => a.deployable).length} validated.` : "No artifacts yet.";
}

function renderReport() {
  const report = st.report;
  const host = report.host;
  if (host) {
    const cpu = (host.cpu && host.cpu.model) || "unknown CPU";
    const pk = host.packages || {};
    const pkgs = ["onnxruntime", "openvino", "ai-edge-litert", "torch"].filter((p) => pk[p]).map((p) => `${p} ${pk[p]}`);
    $("#report-host").textContent = `Measured on ${cpu}, ${host.logical_cores || "?"} logical cores${pkgs.length ? ` (${pkgs.join(", ")})` : ""}. Uploaded model: ${fmtBytes(report.model.size_bytes)}.`;
  } else {
    $("#report-host").textContent = `Uploaded model: ${fmtBytes(report.model.size_bytes)}.`;
  }
  const empty = !report.rows.length;
  $("#report-empty").textContent = empty ? "No artifacts yet: convert the model, or run report-all to compare every format." : "";
  $(".charts").hidden = empty;
  if (!empty) drawReport(report);
  renderRecommendations(report);
  const body = clear($("#report-table tbody"));
  for (const r of report.rows) {
    body.append(el("tr", { dataset: { artifactId: r.artifact_id } },
      el("th", { scope: "row", text: r.format }), el("td", { text: r.precision }),
      el("td", { class: "num", text: fmtBytes(r.size_bytes) }), el("td", { class: "num", text: fmtMs(r.load_ms) }),
      el("td", { class: "num", text: fmtMs(r.p50_ms) }), el("td", { class: "num", text: fmtMs(r.p99_ms) }),
      el("td", { class: "num", text: fmtNum(r.throughput) }),
      el("td", {}, badge(r.validation)), el("td", { class: "num", text: fmtErr(r.max_abs_err) }),
      el("td", { text: r.pareto ? "yes" : "no" })));
  }
}

function renderRecommendations(report) {
  const box = clear($("#recommendations"));
  const rows = new Map(report.rows.map((r) => [r.artifact_id, r]));
  for (const rec of report.recommendations) {
    const c = rec.choice;
    const r = c ? rows.get(c.artifact_id) : null;
    const id = `rec-${rec.key}`;
    const card = el("article", { class: "rec", "aria-labelledby": id, dataset: { key: rec.key } },
      el("h4", { id, text: rec.priority }),
      el("p", { class: "choice" }, c ? [el("strong", { text: `${c.format} ${c.precision}` }), " ", el("code", { text: shortId(c.artifact_id) })] : "none yet"),
      el("p", { text: rec.because }));
    if (r) {
      const dl = el("dl", { class: "numbers" });
      const add = (k, v) => dl.append(el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
      add("p50", `${fmtMs(r.p50_ms)} ms`);
      add("p99", `${fmtMs(r.p99_ms)} ms`);
      add("size", fmtBytes(r.size_bytes));
      add("load", `${fmtMs(r.load_ms)} ms`);
      add("max abs error", fmtErr(r.max_abs_err));
      add("validation", r.validation);
      card.append(dl);
    }
    const agrees = rec.agrees_with_seed === true ? " — this pick agrees" : rec.agrees_with_seed === false ? " — measured here, this pick differs" : "";
    card.append(el("p", { class: "hint", text: `Usual order: ${rec.seed_order}${agrees}` }));
    if (r && r.deployable && canWrite()) {
      const b = el("button", { type: "button", class: "secondary small", text: `Deploy ${c.format} ${c.precision}` });
      b.addEventListener("click", () => pickForDeploy(c.artifact_id));
      card.append(b);
    }
    box.append(card);
  }
}

// ----------------------------------------------------------------------------- deploy and predict

function fillDeploySources() {
  const select = $("#deploy-source");
  const keep = select.value;
  clear(select);
  const names = rowLabels();
  const fmt = st.formats.formats.find((f) => f.name === st.model.format);
  if (fmt && fmt.runtime && !fmt.weights_only) {
    select.append(el("option", { value: `model:${st.model.id}`, text: `the upload itself (${fmt.title})` }));
  }
  for (const a of st.artifacts) {
    const label = names.get(a.id) || a.format;
    const v = a.validation ? a.validation.status : "not validated";
    select.append(el("option", { value: `artifact:${a.id}`, disabled: !a.deployable,
      text: `${label} · ${shortId(a.id)} (${a.deployable ? "validated" : v})` }));
  }
  const usable = (v) => [...select.options].some((o) => o.value === v && !o.disabled);
  // until someone picks: the fastest validated artifact (the report's CPU-speed pick), else the first one
  const speed = st.report && st.report.recommendations.find((r) => r.key === "speed_cpu");
  const fastest = speed && speed.choice ? `artifact:${speed.choice.artifact_id}` : null;
  const first = [...select.options].find((o) => o.value.startsWith("artifact:") && !o.disabled);
  if (st.sourceChosen && usable(keep)) select.value = keep;
  else if (fastest && usable(fastest)) select.value = fastest;
  else if (first) select.value = first.value;
  else if (usable(keep)) select.value = keep;
}

function servesThisModel(d) {
  const ids = new Set(st.artifacts.map((a) => a.id));
  return d.versions.some((v) => v.model_id === modelId || ids.has(v.artifact_id));
}

function renderDeployments() {
  const mine = st.deployments.filter(servesThisModel);
  const body = clear($("#deployments-table tbody"));
  const names = rowLabels();
  for (const d of mine) {
    const serving = d.versions.find((v) => v.version === d.serving_version);
    const what = !serving ? "nothing ready" : serving.model_id ? "the upload itself"
      : `${names.get(serving.artifact_id) || "artifact"} · ${shortId(serving.artifact_id)}`;
    body.append(el("tr", { dataset: { deployment: d.name } },
      el("th", { scope: "row" }, el("code", { text: d.name })),
      el("td", { text: d.serving_version === null ? "none" : `v${d.serving_version}` }),
      el("td", { text: d.versions.map((v) => `v${v.version} ${v.status}`).join(", ") }),
      el("td", { text: what })));
  }
  if (!mine.length) body.append(el("tr", {}, el("td", { colspan: "4", text: "Not deployed yet." })));
  const select = $("#predict-deployment");
  const keep = select.value;
  clear(select);
  for (const d of mine.filter((x) => x.serving_version !== null)) select.append(el("option", { value: d.name, text: `${d.name} (v${d.serving_version})` }));
  if (!select.options.length) select.append(el("option", { value: "", text: "deploy the model first", disabled: true }));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  $("#predict-button").disabled = !select.value;
}

async function refreshResults() {
  const [arts, report, deps] = await Promise.all([
    api(`${base}/artifacts`), api(`${base}/report`), api("/v1/deployments"),
  ]);
  st.artifacts = arts.items;
  st.report = report;
  st.deployments = deps.items;
  renderReport();
  renderArtifacts();
  fillDeploySources();
  renderDeployments();
}

async function deploy(e) {
  e.preventDefault();
  const status = $("#deploy-status");
  const name = $("#deploy-name").value.trim();
  const [kind, id] = $("#deploy-source").value.split(":");
  const body = kind === "model" ? { name, model_id: id } : { name, artifact_id: id };
  $("#deploy-button").disabled = true;
  say(status, `Deploying to ${name} (loading it)…`);
  try {
    const d = await api("/v1/deployments", { method: "POST", json: body });
    const v = d.versions.reduce((a, b) => (b.version > a.version ? b : a));
    if (v.status === "ready") say(status, `Deployed ${name} v${v.version}: ready (loaded in ${fmtMs(v.load_ms)} ms).`, "ok");
    else say(status, `${name} v${v.version} ${v.status}: ${v.reason || ""}`, "error");
    st.deployments = (await api("/v1/deployments")).items;
    renderDeployments();
    if (v.status === "ready") {
      $("#predict-deployment").value = name;
      $("#predict-button").disabled = false;
      if (!$("#predict-input").value.trim()) await loadExamples();
    }
  } catch (err) {
    say(status, `Deploy refused (${err.status}): ${err.message}`, "error");
  } finally {
    $("#deploy-button").disabled = !canWrite();
  }
}

async function loadExamples() {
  const note = $("#examples-source");
  try {
    const ex = await api(`${base}/example-inputs`);
    $("#predict-input").value = JSON.stringify({ inputs: ex.inputs });
    const specs = Object.entries(ex.specs).map(([n, s]) => `${n} ${s.dtype} ${fmtShape(s.shape)}`).join(", ");
    say(note, ex.source === "samples" ? `The model's uploaded sample inputs: ${specs}.`
      : `No samples were uploaded: generated values of the inspected inputs (${specs}).`, "info");
  } catch (err) {
    say(note, `No example inputs: ${err.message}`, "error");
  }
}

function shapeOf(v) {
  const dims = [];
  while (Array.isArray(v)) {
    dims.push(v.length);
    v = v[0];
  }
  return dims;
}

async function predict(e) {
  e.preventDefault();
  const status = $("#predict-status");
  const out = $("#predict-output");
  const name = $("#predict-deployment").value;
  const text = $("#predict-input").value;
  try {
    JSON.parse(text);
  } catch (err) {
    say(status, `The request body is not JSON: ${err.message}`, "error");
    return;
  }
  $("#predict-button").disabled = true;
  const t0 = performance.now();
  try {
    const r = await api(`/v1/deployments/${encodeURIComponent(name)}/predict`, { method: "POST", body: text,
      headers: { "Content-Type": "application/json" } });
    const ms = performance.now() - t0;
    const shapes = Object.entries(r.outputs).map(([n, v]) => `${n} ${fmtShape(shapeOf(v))}`).join(", ");
    say(status, `${name} answered in ${ms.toFixed(1)} ms (round trip from this page): ${shapes}.`, "ok");
    const pretty = JSON.stringify(r.outputs, null, 1);
    out.textContent = pretty.length > 20000 ? `${pretty.slice(0, 20000)}\n… (${pretty.length} characters in all)` : pretty;
  } catch (err) {
    say(status, `Prediction failed (${err.status}): ${err.message}`, "error");
    out.textContent = "";
  } finally {
    $("#predict-button").disabled = !name;
  }
}

// ------------------------------------------------------------------------------------------- boot

function wire() {
  $("#convert-target").addEventListener("change", fillPrecisions);
  $("#convert-form").addEventListener("submit", convert);
  $("#report-all-button").addEventListener("click", reportAll);
  $("#bench-on").addEventListener("change", () => { $("#bench-seconds").disabled = !$("#bench-on").checked; });
  $("#deploy-form").addEventListener("submit", deploy);
  $("#deploy-source").addEventListener("change", () => { st.sourceChosen = true; });
  $("#predict-form").addEventListener("submit", predict);
  $("#load-examples").addEventListener("click", loadExamples);
  st.wired = true;
}

boot(async () => {
  if (!st.wired) wire();
  try {
    st.model = await api(base);
  } catch (err) {
    say($("#model-error"), err.status === 404 ? `No model with id ${modelId} in this project.` : `Could not load the model: ${err.message}`, "error");
    return;
  }
  say($("#model-error"), "", "info");
  renderModel(st.model);
  st.formats = await api("/v1/formats");
  fillTargets();
  const write = canWrite();
  for (const id of ["#convert-button", "#report-all-button", "#deploy-button"]) {
    $(id).disabled = !write;
    $(id).title = write ? "" : "this key may only read: ask for a write key";
  }
  $("#model-body").hidden = false;
  await refreshJobs(); // and the artifacts, report and deployments with it
});
