// Chat with a decoder base: the base or an adapter answers token by token, streamed from
// POST /v1/chat/completions as server-sent events read through fetch (EventSource cannot send
// the key). Compare mode sends each message to two models at once, side by side. A pane may ask
// a composition of adapters instead of one model (the base, with the extension field `lora`).
// Each pane keeps its own conversation; Stop aborts the streams, Clear forgets the conversations.
import { api, events } from "./api.js";
import { composer, compositionName } from "./compose.js";
import { $, $$, el, explain, formatNumber, notify } from "./dom.js";
import { session } from "./state.js";

let initialized = false;
let panes = []; // {node, select, compose, builder, transcript, status, history: [{role, content}]}
let baseId = ""; // the base model's id in /v1/models: what a composition is asked of
const COMPOSITION = "(composition)"; // the select's value for a composition: no adapter's name
let running = null; // {controller, done} of the turn in flight

async function loadModels() {
  let list;
  try {
    list = await api("/v1/models");
  } catch (error) {
    notify(`Could not list the models: ${explain(error)}`, "error");
    return;
  }
  const ids = list.data.map((m) => m.id);
  const adapters = list.data.filter((m) => m.parent).map((m) => m.id);
  baseId = (list.data.find((m) => !m.parent) || {}).id || "";
  panes.forEach((pane, i) => {
    const keep = pane.select.value;
    pane.select.replaceChildren(...list.data.map((m) => el("option", {
      value: m.id, text: m.parent ? `${m.id} (adapter)` : `${m.id} (base model)`,
    })), adapters.length ? el("option", { value: COMPOSITION, text: "a composition of adapters" }) : null);
    pane.builder.setNames(adapters);
    // The first pane starts on the base, the second on the first adapter: a comparison at once.
    const kept = ids.includes(keep) || (keep === COMPOSITION && adapters.length);
    pane.select.value = kept ? keep : (ids[i] ?? ids[0] ?? "");
    pickModel(pane);
  });
}

/** The composition builder shows while the pane asks a composition (one row to start with). */
function pickModel(pane) {
  const composing = pane.select.value === COMPOSITION;
  pane.compose.hidden = !composing;
  if (composing && !pane.builder.value()) pane.builder.add();
}

/** The schema typed in, as `response_format`; null for none; throws for one that is not JSON. */
function responseFormat() {
  const text = $("#chat-schema").value.trim();
  if (!text) return null;
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (error) {
    throw new Error(`The JSON schema is not JSON: ${error.message}`);
  }
  return { type: "json_schema", json_schema: { name: "answer", schema } };
}

function sampling() {
  const body = {};
  const max = $("#chat-max-tokens").value.trim();
  const temperature = $("#chat-temperature").value.trim();
  if (max) body.max_tokens = Number(max);
  if (temperature) body.temperature = Number(temperature);
  return body;
}

/** The route and body of the next turn of `pane`'s conversation. */
function request(pane, text) {
  const system = $("#chat-system").value.trim();
  const turns = [...pane.history, { role: "user", content: text }];
  const lora = pane.select.value === COMPOSITION ? pane.builder.value() : null;
  const format = responseFormat();
  const common = {
    model: lora ? baseId : pane.select.value, ...(lora ? { lora } : {}), ...sampling(),
    ...(format ? { response_format: format } : {}),
    stream: true, stream_options: { include_usage: true },
  };
  if (session.model.chat_template === false) {
    // No template to format messages: the conversation so far is a prompt the model continues.
    const prompt = [system, ...turns.map((m) => m.content)].filter(Boolean).join("\n");
    return ["/v1/completions", { ...common, prompt }];
  }
  const messages = system ? [{ role: "system", content: system }, ...turns] : turns;
  return ["/v1/chat/completions", { ...common, messages }];
}

function turn(role, label, text) {
  const said = document.createTextNode(text); // tokens are appended to this one text node
  const box = el("div", { class: "said" }, said);
  const node = el("li", { class: `turn ${role}` }, el("span", { class: "who", text: label }), box);
  return { node, box, said };
}

function setStatus(pane, text, kind = "hint") {
  pane.status.textContent = text;
  pane.status.className = `pane-status ${kind}`;
}

async function answer(pane, text, signal) {
  const [route, body] = request(pane, text);
  const history = pane.history;
  const asked = turn("user", "you", text);
  const reply = turn("assistant", body.lora ? compositionName(body.lora) : body.model, "");
  reply.node.classList.add("streaming");
  pane.transcript.append(asked.node, reply.node);
  reply.node.scrollIntoView({ block: "nearest" });
  setStatus(pane, "answering...");
  const started = performance.now();
  let content = "";
  let finish = null;
  let usage = null;
  try {
    const response = await api(route, { method: "POST", json: body, raw: true, signal });
    for await (const chunk of events(response)) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const piece = (choice.delta ? choice.delta.content : choice.text) || "";
      if (piece) {
        content += piece;
        reply.said.appendData(piece);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    history.push({ role: "user", content: text }, { role: "assistant", content });
    if (body.response_format) reply.node.append(parsed(content, finish));
    const seconds = (performance.now() - started) / 1000;
    const tokens = usage ? `${usage.completion_tokens} tokens in ` : "";
    setStatus(pane, `${finish === "length" ? "cut at max tokens" : "finished"} (${finish || "done"}), ${tokens}${formatNumber(seconds, 2)} s`);
  } catch (error) {
    if (error.name === "AbortError") {
      // What came before Stop stays, and the conversation goes on from it.
      if (content) {
        history.push({ role: "user", content: text }, { role: "assistant", content });
      } else {
        asked.node.classList.add("failed");
        reply.box.remove();
      }
      reply.node.append(el("p", { class: "hint", text: content ? "stopped" : "stopped before the first token" }));
      setStatus(pane, "stopped");
    } else {
      // A refused or broken turn stays in view but is not sent again with the next one.
      asked.node.classList.add("failed");
      reply.node.classList.add("failed");
      if (!content) reply.box.remove();
      reply.node.append(el("p", { class: "error", text: explain(error) }));
      setStatus(pane, explain(error), "error");
    }
  } finally {
    reply.node.classList.remove("streaming");
  }
}

/** A schema-bound answer, parsed and shown indented (or why it is not whole JSON). */
function parsed(content, finish) {
  try {
    return el("pre", { class: "parsed", text: JSON.stringify(JSON.parse(content), null, 2) });
  } catch {
    const why = finish === "length" ? "cut at max tokens before the JSON was complete" : "not JSON";
    return el("p", { class: "hint parsed", text: `The answer does not parse: ${why}.` });
  }
}

function setRunning(on) {
  $("#chat-send").disabled = on;
  $("#chat-stop").disabled = !on;
}

async function send(event) {
  event.preventDefault();
  const text = $("#chat-message").value.trim();
  if (running || !text) return;
  const active = panes.filter((pane) => !pane.node.hidden);
  if (active.some((pane) => !pane.select.value)) {
    notify("No model to ask: the list of models did not load.", "error");
    return;
  }
  if (active.some((pane) => pane.select.value === COMPOSITION && !pane.builder.value())) {
    notify("Add an adapter to the composition first.", "error");
    return;
  }
  try {
    responseFormat();
  } catch (error) {
    notify(error.message, "error");
    return;
  }
  const controller = new AbortController();
  $("#chat-message").value = "";
  setRunning(true);
  const done = Promise.all(active.map((pane) => answer(pane, text, controller.signal)));
  running = { controller, done };
  await done;
  running = null;
  setRunning(false);
}

async function stop() {
  if (!running) return;
  running.controller.abort();
  await running.done;
}

async function clear() {
  await stop();
  for (const pane of panes) {
    pane.history = [];
    pane.transcript.replaceChildren();
    setStatus(pane, "");
  }
}

function compare() {
  const on = $("#chat-compare").checked;
  panes[1].node.hidden = !on;
  $("#chat-panes").classList.toggle("two", on);
}

export function init() {
  if (initialized) return;
  initialized = true;
  panes = $$("#chat-panes .pane").map((node) => ({
    node, select: $("select.chat-model", node), compose: $(".chat-compose", node),
    builder: composer($(".compose-rows", node)), transcript: $(".transcript", node),
    status: $(".pane-status", node), history: [],
  }));
  for (const pane of panes) {
    pane.select.addEventListener("change", () => pickModel(pane));
    $(".compose-add", pane.node).addEventListener("click", () => pane.builder.add());
  }
  $("#chat-form").addEventListener("submit", send);
  $("#chat-stop").addEventListener("click", stop);
  $("#chat-clear").addEventListener("click", clear);
  $("#chat-compare").addEventListener("change", compare);
  $("#chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
}

export function show() {
  const m = session.model;
  $("#chat-hint").textContent = m.chat_template === false
    ? `${m.name} has no chat template: each turn sends the conversation so far as a plain prompt to /v1/completions, and the model continues it.`
    : `Answers stream from /v1/chat/completions; ${m.name} holds ${m.context_length} tokens of prompt and answer together.`;
  compare();
  loadModels();
}
