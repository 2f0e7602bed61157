// The base model and how the service is doing, from /v1/model, /v1/adapters and /metrics.
import { api } from "./api.js";
import { $, el, explain, formatBytes, formatNumber } from "./dom.js";
import { buckets, parse, quantile, total } from "./metrics.js";
import { session } from "./state.js";

const EVERY_MS = 2000;
const PREDICTIONS = new Set(["/v1/predict", "/v1/embeddings", "/v1/completions", "/v1/chat/completions"]);
const isPrediction = (labels) => PREDICTIONS.has(labels.route);
let timer = null;
let last = null; // the previous scrape, for rates

function facts(target, rows) {
  target.replaceChildren(
    ...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]),
  );
}

function inputsAndOutputs(m) {
  if (m.family === "causal_lm") {
    const asks = m.chat_template ? "chat messages or prompts" : "prompts (no chat template)";
    return [["Inputs", `${asks}, up to ${m.context_length} tokens with the answer`],
      ["Outputs", `text, from a vocabulary of ${m.vocab_size} tokens`]];
  }
  return [["Inputs", m.inputs === "texts" ? `texts, up to ${m.max_seq_length} tokens` : `vectors of ${m.input_dim}`],
    ["Outputs", `${m.output_dim} values`]];
}

function showModel() {
  const m = session.model;
  facts($("#model-facts"), [
    ["Name", m.name],
    ["Architecture", `${m.architecture} (${m.family}, ${m.task})`],
    ...inputsAndOutputs(m),
    ["Parameters", m.parameters.toLocaleString()],
    ["Device, dtype", `${m.device}, ${m.dtype}`],
    ["Layers LoRA can target", String(m.target_modules.length)],
  ]);
}

async function refresh() {
  let samples;
  let registered;
  try {
    const [text, list] = await Promise.all([
      api("/metrics", { raw: true }).then((r) => r.text()),
      api("/v1/adapters"),
    ]);
    samples = parse(text);
    registered = list.data.length;
  } catch (error) {
    facts($("#service-facts"), [["Metrics", `unavailable: ${explain(error)}`]]);
    return;
  }
  const now = performance.now();
  const requests = total(samples, "loraserve_requests_total", isPrediction);
  const hist = buckets(samples, "loraserve_request_seconds", isPrediction);
  const seconds = total(samples, "loraserve_request_seconds_sum", isPrediction);
  let rate = "measuring...";
  let latency = "measuring...";
  if (last !== null) {
    const dt = (now - last.at) / 1000;
    const n = requests - last.requests;
    rate = `${(n / dt).toFixed(1)} /s`;
    const p50 = quantile(0.5, last.hist, hist);
    latency = n > 0
      ? `p50 about ${formatNumber(p50 * 1000, 3)} ms, mean ${formatNumber(((seconds - last.seconds) / n) * 1000, 3)} ms`
      : "no predictions in the last interval";
  }
  last = { at: now, requests, hist, seconds };
  const hits = total(samples, "loraserve_adapter_cache_lookups_total", (l) => l.result === "hit");
  const misses = total(samples, "loraserve_adapter_cache_lookups_total", (l) => l.result === "miss");
  const jobs = samples
    .filter((s) => s.name === "loraserve_jobs" && s.value > 0)
    .map((s) => `${s.value} ${s.labels.status}`)
    .join(", ");
  facts($("#service-facts"), [
    ["Adapters registered", String(registered)],
    ["Adapters resident", String(total(samples, "loraserve_adapters_resident"))],
    ["Adapter cache", `${formatBytes(total(samples, "loraserve_adapter_cache_bytes"))}, ${hits + misses ? `${((100 * hits) / (hits + misses)).toFixed(1)}% hits` : "no lookups yet"}`],
    ["Prediction requests", rate],
    ["Prediction latency", latency],
    ["Queue", `${total(samples, "loraserve_queue_rows")} rows waiting`],
    ["Training jobs", jobs || "none"],
  ]);
}

export function init() {}

export function show() {
  showModel();
  last = null;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, EVERY_MS);
}

export function hide() {
  clearInterval(timer);
  timer = null;
}
