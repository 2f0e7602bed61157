// Datasets and training jobs: upload, start, watch (progress and live loss curves fed by the
// job's events), cancel; a finished job links to its adapter.
import { api, path } from "./api.js";
import { lossChart } from "./chart.js";
import { $, $$, confirmAction, el, explain, formatNumber, formatTime, notify } from "./dom.js";
import { session } from "./state.js";
import * as adapters from "./adapters.js";

const WATCH_EVERY_MS = 1000;
const LIST_EVERY_MS = 3000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
let initialized = false;
let listTimer = null;
let watched = null; // {id, after, chart, timer}
// The validation figure each family's jobs report beside their losses, drawn on its own axis.
const FIGURES = {
  hf: { key: "validation_recall_at_1", label: "recall@1" },
  causal_lm: { key: "validation_exact_match", label: "exact match" },
};
// What a dataset of each family holds.
const DATASET_HINTS = {
  hf: "Text pairs: JSONL or JSON rows {\"anchor\": ..., \"positive\": ...}.",
  causal_lm: "SFT rows: JSONL or JSON, each {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} "
    + "or {\"prompt\": ..., \"completion\": ...}; the loss counts the answers' tokens only.",
};

function progressBar(job) {
  const p = job.progress;
  const max = Math.max(p.total_steps, 1);
  return el("progress", { max, value: job.status === "succeeded" ? max : p.step });
}

function jobRow(job) {
  const p = job.progress;
  const cancellable = session.canAdmin && (job.status === "queued" || job.status === "running");
  return el("tr", { dataset: { job: job.id } },
    el("td", { class: "mono", title: job.id, text: job.id.slice(0, 14) }),
    el("td", { text: job.adapter_name }),
    el("td", { class: `status ${job.status}`, text: job.status }),
    el("td", {}, progressBar(job), ` ${p.epoch}/${p.epochs}`),
    el("td", { text: formatNumber(p.train_loss) }),
    el("td", { text: formatNumber(p.validation_loss) }),
    el("td", { class: "actions" },
      el("button", { type: "button", text: "Watch", onclick: () => watch(job.id) }),
      cancellable ? el("button", { type: "button", class: "danger", text: "Cancel", onclick: () => cancel(job.id) }) : null));
}

async function loadJobs() {
  try {
    const jobs = await api("/v1/fine-tuning/jobs?limit=20");
    $("#jobs-table tbody").replaceChildren(...jobs.data.map(jobRow));
  } catch (error) {
    notify(`Could not list jobs: ${explain(error)}`, "error");
  }
}

async function loadDatasets() {
  let list;
  try {
    list = await api("/v1/datasets");
  } catch (error) {
    notify(`Could not list datasets: ${explain(error)}`, "error");
    return;
  }
  const label = (d) => `${d.filename || d.id} (${d.rows} rows)`;
  $("#datasets-table tbody").replaceChildren(...list.data.map((d) => el("tr", {},
    el("td", { class: "mono", title: d.id, text: d.id.slice(0, 14) }),
    el("td", { text: d.filename || "" }),
    el("td", { text: d.rows }),
    el("td", { text: d.format }),
    el("td", {}, session.canAdmin
      ? el("button", { type: "button", class: "danger", text: "Delete", onclick: () => removeDataset(d) })
      : null))));
  const options = list.data.map((d) => el("option", { value: d.id, text: label(d) }));
  const keepTrain = $("#job-train").value;
  const keepValid = $("#job-valid").value;
  $("#job-train").replaceChildren(...options.map((o) => o.cloneNode(true)));
  $("#job-valid").replaceChildren(el("option", { value: "", text: "none" }), ...options);
  if (keepTrain) $("#job-train").value = keepTrain;
  $("#job-valid").value = keepValid;
}

async function removeDataset(dataset) {
  if (!(await confirmAction(`Delete the dataset "${dataset.filename || dataset.id}"?`))) return;
  try {
    await api(path("/v1/datasets/{}", dataset.id), { method: "DELETE" });
  } catch (error) {
    notify(`Delete failed: ${explain(error)}`, "error");
  }
  loadDatasets();
}

async function uploadDataset(event) {
  event.preventDefault();
  const file = $("#dataset-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const dataset = await api("/v1/datasets", { method: "POST", form });
    notify(`Dataset ${dataset.id} uploaded: ${dataset.rows} rows.`);
    $("#dataset-form").reset();
    await loadDatasets();
    $("#job-train").value = dataset.id;
  } catch (error) {
    notify(`Dataset upload failed: ${explain(error)}`, "error");
  }
}

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

async function startJob(event) {
  event.preventDefault();
  const hyperparameters = {
    rank: number("#job-rank"), alpha: number("#job-alpha"), epochs: number("#job-epochs"),
    batch_size: number("#job-batch"), learning_rate: number("#job-lr"), seed: number("#job-seed"),
    use_rslora: $("#job-rslora").checked,
  };
  const targets = $("#job-targets").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (targets.length) hyperparameters.target_modules = targets;
  if ($("#job-loss").value) hyperparameters.loss = $("#job-loss").value;
  for (const k of Object.keys(hyperparameters)) if (hyperparameters[k] === undefined) delete hyperparameters[k];
  const body = {
    adapter_name: $("#job-name").value.trim(),
    training_dataset: $("#job-train").value,
    hyperparameters,
  };
  if ($("#job-valid").value) body.validation_dataset = $("#job-valid").value;
  try {
    const job = await api("/v1/fine-tuning/jobs", { method: "POST", json: body });
    notify(`Job ${job.id} started: it will write the adapter ${job.adapter_name}.`);
    await loadJobs();
    watch(job.id);
  } catch (error) {
    notify(`The job was not started: ${explain(error)}`, "error");
  }
}

async function cancel(id) {
  if (!(await confirmAction("Cancel this training job? Its progress is lost.", "Cancel job"))) return;
  try {
    await api(path("/v1/fine-tuning/jobs/{}/cancel", id), { method: "POST" });
    notify("Cancelling the job.");
  } catch (error) {
    notify(`Cancel failed: ${explain(error)}`, "error");
  }
  loadJobs();
  if (watched && watched.id === id) poll();
}

function unwatch() {
  if (!watched) return;
  clearTimeout(watched.timer);
  watched.chart.destroy();
  watched = null;
  $("#job-watch").hidden = true;
}

function watch(id) {
  unwatch();
  $("#job-watch").hidden = false;
  $("#watch-title").textContent = `Job ${id}`;
  $("#watch-events").replaceChildren();
  $("#watch-result").replaceChildren();
  watched = { id, after: null, timer: null, chart: lossChart($("#watch-chart"), FIGURES[session.family]) };
  poll();
}

function showJob(job) {
  const p = job.progress;
  $("#watch-status").textContent = job.status;
  $("#watch-status").className = `status ${job.status}`;
  const bar = $("#watch-progress");
  bar.max = Math.max(p.total_steps, 1);
  bar.value = job.status === "succeeded" ? bar.max : p.step;
  $("#watch-steps").textContent = `epoch ${p.epoch} of ${p.epochs}, step ${p.step} of ${p.total_steps}`;
  $("#watch-cancel").hidden = !session.canAdmin || FINISHED.has(job.status) || job.status === "cancelling";
  const result = $("#watch-result");
  if (job.status === "succeeded") {
    result.replaceChildren("Wrote the adapter ", el("a", {
      href: "#adapters", text: job.adapter_name,
      onclick: () => adapters.reveal(job.adapter_name),
    }), `, ${formatTime(job.finished_at)}.`);
  } else if (job.error) {
    result.replaceChildren(el("span", { class: "error", text: `${job.error.code}: ${job.error.message}` }));
  }
}

async function poll() {
  const mine = watched;
  if (!mine) return;
  clearTimeout(mine.timer);
  let job;
  try {
    job = await api(path("/v1/fine-tuning/jobs/{}", mine.id));
    for (;;) {
      const query = new URLSearchParams({ limit: "100" });
      if (mine.after) query.set("after", mine.after);
      const events = await api(`${path("/v1/fine-tuning/jobs/{}/events", mine.id)}?${query}`);
      const list = $("#watch-events");
      for (const event of events.data) {
        mine.after = event.id;
        list.append(el("li", { class: event.level, text: `${formatTime(event.created_at)} ${event.message}` }));
        if (event.type === "metrics" && event.data) mine.chart.add(event.data);
      }
      if (events.data.length) list.scrollTop = list.scrollHeight; // the newest in view
      if (!events.has_more) break;
    }
  } catch (error) {
    if (error.status === 401) return; // the key was dropped or revoked: the page asks again
    notify(`Could not follow the job: ${explain(error)}`, "error");
  }
  if (watched !== mine) return;
  if (job) showJob(job);
  if (!job || !FINISHED.has(job.status)) mine.timer = setTimeout(poll, WATCH_EVERY_MS);
  else loadJobs();
}

export function init() {
  if (initialized) return;
  initialized = true;
  $("#dataset-form").addEventListener("submit", uploadDataset);
  $("#job-form").addEventListener("submit", startJob);
  $("#jobs-refresh").addEventListener("click", loadJobs);
  $("#watch-close").addEventListener("click", unwatch);
  $("#watch-cancel").addEventListener("click", () => watched && cancel(watched.id));
}

export function show() {
  const text = session.textBase;
  $("#dataset-hint").textContent = DATASET_HINTS[session.family]
    || `A safetensors file with tensors inputs (N, ${session.model.input_dim}) and targets (N, ${session.model.output_dim}).`;
  $("#dataset-file").accept = text ? ".jsonl,.json" : ".safetensors";
  // Only the losses that fit this base's data are offered (the server checks it too).
  for (const option of $$("#job-loss option[data-families]")) {
    option.hidden = option.disabled = !option.dataset.families.split(" ").includes(session.family);
  }
  if ($("#job-loss").selectedOptions[0]?.disabled) $("#job-loss").value = "";
  $("#job-target-names").replaceChildren(
    ...session.model.target_modules.map((t) => el("option", { value: t.name })));
  loadDatasets();
  loadJobs();
  clearInterval(listTimer);
  listTimer = setInterval(loadJobs, LIST_EVERY_MS);
}

export function hide() {
  clearInterval(listTimer);
  listTimer = null;
}
