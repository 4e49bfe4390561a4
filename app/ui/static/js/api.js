// The page's only way to data: the public /v1 API, with the signed-in key as "Authorization: Bearer".
// The key is kept in this tab's sessionStorage: never in a URL, a cookie or the page's HTML.

import { $, el, say } from "./dom.js";

const KEY = "modelport.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail || {};
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

function authHeaders(extra, key) {
  const h = new Headers(extra || {});
  const k = key === undefined ? storedKey() : key;
  if (k) h.set("Authorization", `Bearer ${k}`);
  return h;
}

// The API's error shape is {"error": {"code", "message", "detail"}} (v2 routes: {"error": "..."}).
function errorFrom(status, statusText, body) {
  const e = body && body.error;
  if (e && typeof e === "object") return new ApiError(status, e.code, e.message, e.detail);
  if (typeof e === "string") return new ApiError(status, "error", e);
  return new ApiError(status, `http_${status}`, `${status} ${statusText || "error"}`);
}

export async function api(path, { method = "GET", json, body, headers, key, as } = {}) {
  const init = { method, headers: authHeaders(headers, key) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers.set("Content-Type", "application/json");
  } else if (body !== undefined) {
    init.body = body;
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network_error", `the server did not answer: ${err.message}`);
  }
  if (!r.ok) {
    let parsed = null;
    try {
      parsed = await r.json();
    } catch {
      /* not JSON */
    }
    const err = errorFrom(r.status, r.statusText, parsed);
    if (r.status === 401 && key === undefined) document.dispatchEvent(new CustomEvent("modelport:unauthorized", { detail: err }));
    throw err;
  }
  if (as === "blob") return r.blob();
  if (as === "text") return r.text();
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r.text();
}

// POST /v1/models as multipart/form-data, with upload progress (XMLHttpRequest: fetch reports none).
export function upload(files, name, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    if (name) form.append("name", name);
    for (const f of files) form.append("file", f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/models");
    const k = storedKey();
    if (k) xhr.setRequestHeader("Authorization", `Bearer ${k}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 200 || xhr.status === 201) resolve({ model: xhr.response, created: xhr.status === 201 });
      else reject(errorFrom(xhr.status, xhr.statusText, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", "the upload did not reach the server")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "the upload was cancelled")));
    xhr.send(form);
  });
}

// ---------------------------------------------------------------------------------------- session

export const session = { who: null };

export function canWrite() {
  return session.who !== null && session.who.scope !== "read";
}

function showSession(who) {
  session.who = who;
  const info = $("#session-info");
  const out = $("#sign-out");
  if (who.key_id) {
    info.textContent = `Project ${who.project} · ${who.scope} key ${who.key_id}`;
    out.hidden = false;
  } else {
    info.textContent = `Keys are off on this server: acting for project ${who.project}`;
    out.hidden = true;
  }
  document.body.dataset.scope = who.scope;
  $("#signin").hidden = true;
  $("#content").hidden = false;
}

function showSignIn(message) {
  session.who = null;
  $("#content").hidden = true;
  $("#signin").hidden = false;
  $("#session-info").textContent = "Not signed in";
  $("#sign-out").hidden = true;
  const err = $("#signin-error");
  if (message) say(err, message, "error");
  else err.textContent = "";
  $("#signin-key").focus();
}

// Who are we? GET /v1/keys/current with the stored key (or none: a server without keys answers).
// Then onReady(who) draws the page; a 401 asks for a key instead.
export async function boot(onReady) {
  const form = $("#signin-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#signin-key");
    const key = input.value.trim();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const who = await api("/v1/keys/current", { key });
      sessionStorage.setItem(KEY, key);
      input.value = "";
      showSession(who);
      await onReady(who);
    } catch (err) {
      say($("#signin-error"), `Sign-in failed: ${err.message}`, "error");
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  $("#sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    window.location.assign("/ui");
  });
  document.addEventListener("modelport:unauthorized", (e) => {
    sessionStorage.removeItem(KEY);
    showSignIn(`Signed out: ${e.detail.message}`);
  });
  try {
    const who = await api("/v1/keys/current", { key: storedKey() });
    showSession(who);
    await onReady(who);
  } catch (err) {
    if (err.status === 401) {
      const had = storedKey();
      sessionStorage.removeItem(KEY);
      showSignIn(had ? `The stored key no longer works: ${err.message}` : null);
    } else {
      $("#content").hidden = false;
      $("#main").prepend(el("p", { class: "error", role: "alert", text: `The server could not be asked: ${err.message}` }));
    }
  }
}
