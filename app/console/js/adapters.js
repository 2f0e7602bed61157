// The adapter table: upload (picked or dropped PEFT files), details, download, delete.
import { api, path } from "./api.js";
import { $, confirmAction, el, explain, formatBytes, formatNumber, formatTime, notify } from "./dom.js";
import { session } from "./state.js";

let initialized = false;
const open = new Set(); // names whose details are shown
const picked = { config: null, weights: null };
let byName = new Map(); // the listed adapters, in the order the server gives

async function download(name) {
  try {
    const response = await api(path("/v1/adapters/{}/download", name), { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `${name}.zip` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    notify(`Download of ${name} failed: ${explain(error)}`, "error");
  }
}

async function remove(name) {
  const sure = await confirmAction(
    `Delete the adapter "${name}"? Requests naming it will fail with 404.`,
  );
  if (!sure) return;
  try {
    await api(path("/v1/adapters/{}", name), { method: "DELETE" });
    open.delete(name);
    notify(`Deleted ${name}.`);
  } catch (error) {
    notify(`Delete of ${name} failed: ${explain(error)}`, "error");
  }
  load();
}

async function details(adapter, cell) {
  const layers = (adapter.layers || []).map((l) =>
    el("li", { text: `${l.module}: rank ${l.rank}, alpha ${l.alpha}, scaling ${formatNumber(l.scaling)}` }));
  const box = el("div", { class: "details" },
    el("p", { text: `Version ${adapter.version}, sha256 of its two files.` }),
    adapter.error ? el("p", { class: "error", text: `Broken: ${adapter.error.message}` }) : null,
    el("p", { text: `Created ${formatTime(adapter.created_at)}; scaling ${formatNumber(adapter.scaling)}${adapter.use_rslora ? " (rsLoRA)" : ""}.` }),
    el("h3", { text: "Layers" }), el("ul", {}, layers),
    el("h3", { text: "Versions" }));
  cell.replaceChildren(box);
  try {
    const versions = await api(path("/v1/adapters/{}/versions", adapter.name));
    box.append(el("ul", {}, versions.data.map((v) => el("li", {
      text: `${v.version.slice(0, 12)}${v.current ? " (current)" : ""}: ${v.source}, ${formatBytes(v.size_bytes)}, serving since ${formatTime(v.served_from)}`,
    }))));
  } catch (error) {
    box.append(el("p", { class: "error", text: explain(error) }));
  }
}

function row(adapter) {
  const tr = el("tr", { dataset: { name: adapter.name } },
    el("td", { class: "name", text: adapter.name }),
    el("td", { class: "mono", title: adapter.version, text: adapter.version.slice(0, 12) }),
    el("td", { text: adapter.rank ?? "" }),
    el("td", { text: adapter.alpha ?? "" }),
    el("td", { text: (adapter.target_modules || []).join(", ") }),
    el("td", { text: formatBytes(adapter.size_bytes) }),
    el("td", { text: adapter.source }),
    el("td", { text: adapter.status === "broken" ? "broken" : adapter.residency }),
    el("td", { text: adapter.merged ? "yes" : "no" }),
    el("td", { class: "actions" },
      el("button", { type: "button", text: "Details", onclick: () => toggle(adapter) }),
      el("button", { type: "button", text: "Download", onclick: () => download(adapter.name) }),
      session.canAdmin
        ? el("button", { type: "button", class: "danger", text: "Delete", onclick: () => remove(adapter.name) })
        : null));
  return tr;
}

function toggle(adapter) {
  if (open.has(adapter.name)) open.delete(adapter.name);
  else open.add(adapter.name);
  render();
}

function render() {
  const body = $("#adapters-table tbody");
  const rows = [];
  for (const adapter of byName.values()) {
    rows.push(row(adapter));
    if (open.has(adapter.name)) {
      const cell = el("td", { colspan: 10 });
      rows.push(el("tr", { class: "detail-row" }, cell));
      details(adapter, cell);
    }
  }
  body.replaceChildren(...rows);
  $("#adapters-empty").hidden = byName.size > 0;
}

async function load() {
  try {
    const list = await api("/v1/adapters");
    byName = new Map(list.data.map((a) => [a.name, a]));
    render();
  } catch (error) {
    notify(`Could not list adapters: ${explain(error)}`, "error");
  }
}

/** Open an adapter's details (a finished training job links here). */
export async function reveal(name) {
  open.add(name);
  await load();
}

function takeFiles(files) {
  for (const file of files) {
    if (file.name.endsWith(".json")) picked.config = file;
    else if (file.name.endsWith(".safetensors")) picked.weights = file;
  }
  const drop = $("#drop-zone");
  drop.dataset.config = picked.config ? picked.config.name : "";
  drop.dataset.weights = picked.weights ? picked.weights.name : "";
  notify(`Picked ${[picked.config, picked.weights].filter(Boolean).map((f) => f.name).join(" and ")}.`);
}

async function upload(event) {
  event.preventDefault();
  const name = $("#upload-name").value.trim();
  const config = $("#upload-config").files[0] || picked.config;
  const weights = $("#upload-weights").files[0] || picked.weights;
  if (!config || !weights) {
    notify("Pick or drop both files: adapter_config.json and adapter_model.safetensors.", "error");
    return;
  }
  const form = new FormData();
  form.append("name", name);
  form.append("config", config, "adapter_config.json");
  form.append("weights", weights, "adapter_model.safetensors");
  const query = $("#upload-overwrite").checked ? "?overwrite=true" : "";
  try {
    const adapter = await api(`/v1/adapters${query}`, { method: "POST", form });
    notify(`Uploaded ${adapter.name} (version ${adapter.version.slice(0, 12)}).`);
    $("#upload-form").reset();
    picked.config = picked.weights = null;
  } catch (error) {
    notify(`Upload failed: ${explain(error)}`, "error");
  }
  load();
}

export function init() {
  if (initialized) return;
  initialized = true;
  $("#upload-form").addEventListener("submit", upload);
  $("#upload-form").addEventListener("reset", () => { picked.config = picked.weights = null; });
  $("#adapters-refresh").addEventListener("click", load);
  const drop = $("#drop-zone");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeFiles(event.dataTransfer.files);
  });
}

export function show() { load(); }
