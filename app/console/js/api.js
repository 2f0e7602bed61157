// Every call the console makes goes through here, with the key of this tab as a bearer token.
// The key lives in sessionStorage: gone when the tab closes, never in a cookie the browser would
// send on its own.

const KEY = "loraserve.key";

export class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

let onUnauthorized = () => {};
export function whenUnauthorized(handler) { onUnauthorized = handler; }

/**
 * Call the API. `json` sends a JSON body, `form` a FormData; the answer is its parsed JSON, or
 * the Response itself with `raw` (to read headers or a download). A non-2xx answer throws an
 * ApiError carrying the envelope's code and message.
 */
export async function api(path, { method = "GET", json, form, headers = {}, raw = false } = {}) {
  const sent = new Headers(headers);
  const held = key.get();
  if (held) sent.set("Authorization", `Bearer ${held}`);
  let body;
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, "network_error", `the service did not answer: ${error.message}`);
  }
  if (!response.ok) {
    let detail = {};
    try { detail = (await response.json()).error || {}; } catch { /* not the envelope */ }
    const error = new ApiError(
      response.status,
      detail.code || `http_${response.status}`,
      detail.message || response.statusText,
      detail.param,
    );
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/** `Server-Timing: queue;dur=1.2, model;dur=3.4` as {queue: 1.2, model: 3.4}. */
export function serverTiming(response) {
  const timing = {};
  for (const part of (response.headers.get("server-timing") || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && dur) timing[name] = Number(dur.slice(4));
  }
  return timing;
}

export const path = (template, ...names) =>
  template.replace(/\{\}/g, () => encodeURIComponent(names.shift()));
