// Try it: run rows (or texts) through the base and any adapters, in each mode asked for, and show
// the outputs with the service's Server-Timing figures. For a text base: embeddings and the
// cosine similarity between the inputs.
import { api, serverTiming } from "./api.js";
import { composer, compositionName } from "./compose.js";
import { $, $$, el, explain, formatNumber, notify } from "./dom.js";
import { session } from "./state.js";

const SHOWN = 8; // values shown per output row
let initialized = false;
let builder = null; // the composition builder (compose.js)

async function loadTargets() {
  const box = $("#try-targets");
  const chosen = new Set($$("input[name=target]:checked", box).map((i) => i.value));
  if (!box.dataset.loaded) chosen.add("");
  let list = { data: [] };
  try {
    list = await api("/v1/adapters");
  } catch (error) {
    notify(`Could not list adapters: ${explain(error)}`, "error");
  }
  const option = (value, label) => el("label", { class: "inline" },
    el("input", { type: "checkbox", name: "target", value, checked: chosen.has(value) }), ` ${label}`);
  const readyNames = list.data.filter((a) => a.status === "ready").map((a) => a.name);
  box.replaceChildren(option("", "base model (no adapter)"), ...readyNames.map((n) => option(n, n)));
  box.dataset.loaded = "1";
  builder.setNames(readyNames);
}

function targetName(target) {
  if (Array.isArray(target)) return compositionName(target);
  return target || "base model";
}

function parseRows(text) {
  const trimmed = text.trim();
  if (!trimmed) throw new Error("paste some rows first");
  if (trimmed.startsWith("[")) {
    const parsed = JSON.parse(trimmed);
    return Array.isArray(parsed[0]) ? parsed : [parsed];
  }
  return trimmed.split("\n").filter((l) => l.trim()).map((line) =>
    line.trim().split(/[\s,]+/).map(Number));
}

function timingText(timing) {
  return ["queue", "model", "total"].filter((k) => k in timing)
    .map((k) => `${k} ${formatNumber(timing[k], 3)} ms`).join(", ");
}

function outputsTable(rows) {
  return el("table", { class: "outputs" }, rows.map((row, i) => el("tr", {},
    el("th", { text: `row ${i}` }),
    row.slice(0, SHOWN).map((v) => el("td", { text: formatNumber(v) })),
    row.length > SHOWN ? el("td", { class: "hint", text: `... ${row.length} values` }) : null)));
}

function card(title, timing, ...body) {
  return el("div", { class: "card result" }, el("h3", { text: title }),
    el("p", { class: "timing", text: `Server-Timing: ${timingText(timing)}` }), ...body);
}

async function runVectors(targets, modes, inputs, results) {
  for (const adapter of targets) {
    const outputs = {};
    for (const mode of modes) {
      const name = targetName(adapter);
      try {
        const response = await api("/v1/predict", {
          method: "POST", json: { inputs, adapter: adapter || null, mode }, raw: true,
        });
        const answer = await response.json();
        outputs[mode] = answer.outputs;
        results.append(card(`${name}, ${mode} (answered ${answer.mode})`, serverTiming(response),
          outputsTable(answer.outputs)));
      } catch (error) {
        results.append(el("div", { class: "card result error", text: `${name}, ${mode}: ${explain(error)}` }));
      }
    }
    if (outputs.merged && outputs.unmerged) {
      const diff = Math.max(...outputs.merged.flatMap((row, i) =>
        row.map((v, j) => Math.abs(v - outputs.unmerged[i][j]))));
      results.append(el("p", { class: "hint", text: `${targetName(adapter)}: largest difference between merged and unmerged ${formatNumber(diff)}` }));
    }
  }
}

function cosineTable(vectors) {
  const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
  return el("table", { class: "outputs cosine" },
    el("tr", {}, el("th", { text: "cosine" }), vectors.map((_, j) => el("th", { text: `text ${j}` }))),
    vectors.map((a, i) => el("tr", {}, el("th", { text: `text ${i}` }),
      vectors.map((b) => el("td", { text: cos(a, b).toFixed(4) })))));
}

async function runTexts(targets, modes, texts, results) {
  for (const adapter of targets) {
    const name = targetName(adapter);
    for (const mode of modes) {
      try {
        const target = Array.isArray(adapter) ? { model: session.model.name, lora: adapter }
          : { model: adapter || session.model.name };
        const response = await api("/v1/embeddings", {
          method: "POST", json: { ...target, input: texts, mode }, raw: true,
        });
        const answer = await response.json();
        const vectors = answer.data.map((d) => d.embedding);
        results.append(card(`${name}, ${mode} (answered ${answer.mode}): ${vectors.length} embeddings of ${vectors[0].length} values, ${answer.usage.total_tokens} tokens`,
          serverTiming(response), outputsTable(vectors), el("h4", { text: "Cosine similarity" }), cosineTable(vectors)));
      } catch (error) {
        results.append(el("div", { class: "card result error", text: `${name}, ${mode}: ${explain(error)}` }));
      }
    }
  }
}

async function run(event) {
  event.preventDefault();
  const results = $("#try-results");
  const targets = $$("input[name=target]:checked").map((i) => i.value);
  const composed = builder.value();
  if (composed) targets.push(composed);
  if (!targets.length) {
    notify("Pick the base model, an adapter or a composition.", "error");
    return;
  }
  results.replaceChildren(el("p", { class: "hint", text: "Running..." }));
  const out = el("div");
  const modes = $$("#try-modes input:checked").map((i) => i.value);
  if (!modes.length) modes.push("auto");
  if (session.textBase) {
    const texts = $("#try-input").value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!texts.length) {
      results.replaceChildren(el("p", { class: "error", text: "Type one text per line first." }));
      return;
    }
    await runTexts(targets, modes, texts, out);
  } else {
    let rows;
    try {
      rows = parseRows($("#try-input").value);
    } catch (error) {
      results.replaceChildren(el("p", { class: "error", text: `The rows could not be read: ${error.message}` }));
      return;
    }
    await runVectors(targets, modes, rows, out);
  }
  results.replaceChildren(out);
}

function fillRandom() {
  const dim = session.model.input_dim;
  const rows = Array.from({ length: 2 }, () =>
    Array.from({ length: dim }, () => Number((Math.random() * 2 - 1).toFixed(3))));
  $("#try-input").value = JSON.stringify(rows);
}

export function init() {
  if (initialized) return;
  initialized = true;
  $("#try-form").addEventListener("submit", run);
  $("#try-random").addEventListener("click", fillRandom);
  builder = composer($("#try-compose-rows"));
  $("#try-compose-add").addEventListener("click", () => builder.add());
}

export function show() {
  const text = session.textBase;
  $("#try-random").hidden = text;
  $("#try-input-label").textContent = text
    ? "Texts, one per line"
    : `Rows of ${session.model.input_dim} numbers: a JSON list of rows, or one row per line`;
  loadTargets();
}
