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
 * the Response itself with `raw` (to read headers, a download or a stream); `signal` (an
 * AbortController's) stops it. A non-2xx answer throws an ApiError carrying the envelope's code
 * and message.
 */
export async function api(path, { method = "GET", json, form, headers = {}, raw = false, signal } = {}) {
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
    response = await fetch(path, { method, headers: sent, body, cache: "no-store", signal });
  } catch (error) {
    if (error.name === "AbortError") throw error; // the caller stopped it: not the service's fault
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

/**
 * The data of each server-sent event of a streamed answer (`raw` Response), parsed, until
 * `data: [DONE]`. An error sent mid-stream (`data: {"error": {...}}`) throws as an ApiError.
 * EventSource cannot send the key header, so the stream is read from fetch's body.
 */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // closed without [DONE]: what came is all there is
      buffer += value;
      const blocks = buffer.split(/\r?\n\r?\n/); // events end with a blank line
      buffer = blocks.pop();
      for (const block of blocks) {
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue; // a comment or keep-alive
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) {
          const e = parsed.error;
          throw new ApiError(0, e.code || "stream_error", e.message || "the answer broke off", e.param);
        }
        yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // frees the connection when the reader stops early
  }
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
