// /ui: the models list (GET /v1/models, searched by name and format) and drag-and-drop upload
// (POST /v1/models, multipart, with its progress).

import { api, boot, canWrite, upload } from "./api.js";
import { $, badge, clear, el, fmtBytes, fmtNum, fmtTime, say } from "./dom.js";

const PAGE = 25;
const view = { offset: 0, total: 0, wired: false, seq: 0 };

async function loadFormats() {
  const select = $("#format-filter");
  if (select.options.length > 1) return;
  const { formats } = await api("/v1/formats");
  for (const f of formats.sort((a, b) => a.title.localeCompare(b.title))) {
    select.append(el("option", { value: f.name, text: f.title }));
  }
}

async function loadModels() {
  const seq = ++view.seq;
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(view.offset) });
  const name = $("#search").value.trim();
  const format = $("#format-filter").value;
  if (name) params.set("name", name);
  if (format) params.set("format", format);
  const page = await api(`/v1/models?${params}`);
  if (seq !== view.seq) return; // a newer search answered first
  view.total = page.total;
  const body = clear($("#models-table tbody"));
  for (const m of page.items) {
    const safety = (m.inspection && m.inspection.safety && m.inspection.safety.status) || "unknown";
    body.append(el("tr", { dataset: { modelId: m.id } },
      el("th", { scope: "row" }, el("a", { href: `/ui/models/${encodeURIComponent(m.id)}`, text: m.name })),
      el("td", { text: m.format_title || m.format }),
      el("td", { class: "num", text: fmtBytes(m.size_bytes) }),
      el("td", { class: "num", text: fmtNum(m.inspection && m.inspection.params) }),
      el("td", {}, badge(safety)),
      el("td", { text: fmtTime(m.created_at) })));
  }
  const first = page.total ? view.offset + 1 : 0;
  const last = view.offset + page.items.length;
  const filter = name || format ? " matching the search" : "";
  $("#list-summary").textContent = page.total
    ? `Models ${first}–${last} of ${page.total}${filter}.`
    : (filter ? "No model matches the search." : "No models yet: upload one.");
  $("#prev-page").disabled = view.offset === 0;
  $("#next-page").disabled = last >= page.total;
}

function setProgress(loaded, total) {
  const bar = $("#upload-progress");
  bar.value = total ? Math.round((loaded / total) * 100) : 0;
  $("#upload-bytes").textContent = `${fmtBytes(loaded)} of ${fmtBytes(total)} (${bar.value} %)`;
}

async function send(files) {
  const status = $("#upload-status");
  if (!files.length) return;
  if (!canWrite()) {
    say(status, "This key may only read: uploading needs a write key.", "error");
    return;
  }
  const names = Array.from(files, (f) => f.name).join(", ");
  setProgress(0, Array.from(files).reduce((n, f) => n + f.size, 0));
  say(status, `Uploading ${names}…`);
  $("#dropzone").classList.add("busy");
  try {
    const { model, created } = await upload(files, $("#upload-name").value.trim(), setProgress);
    $("#upload-progress").value = 100;
    clear(status);
    status.dataset.kind = "ok";
    const what = `${model.name} (${model.format_title || model.format}, ${fmtBytes(model.size_bytes)})`;
    status.append(`${created ? "Uploaded" : "Already uploaded:"} ${what}. `,
      el("a", { href: `/ui/models/${encodeURIComponent(model.id)}`, text: `Open ${model.name}` }));
    view.offset = 0;
    await loadModels();
  } catch (err) {
    say(status, `Upload failed (${err.status || "no answer"}): ${err.message}`, "error");
  } finally {
    $("#dropzone").classList.remove("busy");
    $("#upload-files").value = "";
  }
}

function wire() {
  const zone = $("#dropzone");
  // a file dropped anywhere else must not make the browser open it instead of the page
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  zone.addEventListener("dragenter", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("over"); });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    send(e.dataTransfer.files);
  });
  $("#upload-files").addEventListener("change", (e) => send(e.target.files));
  let timer = null;
  const search = () => { view.offset = 0; loadModels().catch(showError); };
  $("#search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  $("#format-filter").addEventListener("change", search);
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("#prev-page").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); loadModels().catch(showError); });
  $("#next-page").addEventListener("click", () => { view.offset += PAGE; loadModels().catch(showError); });
}

function showError(err) {
  say($("#list-summary"), `Could not list models: ${err.message}`, "error");
}

boot(async () => {
  if (!view.wired) {
    wire();
    view.wired = true;
  }
  const readOnly = !canWrite();
  $("#upload-files").disabled = readOnly;
  if (readOnly) say($("#upload-status"), "This key may only read: uploading needs a write key.", "info");
  await Promise.all([loadFormats(), loadModels()]).catch(showError);
});
