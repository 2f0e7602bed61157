// Start-up: ask who the key belongs to, then show the tabs its role may use.
import { api, key, whenUnauthorized } from "./api.js";
import { $, $$, explain } from "./dom.js";
import { session } from "./state.js";
import * as overview from "./overview.js";
import * as adapters from "./adapters.js";
import * as training from "./training.js";
import * as tryit from "./tryit.js";
import * as chat from "./chat.js";

const tabs = { overview, adapters, training, try: tryit, chat };
let current = null;

// Datasets and jobs are admin routes: a read-only key has no training tab.
const ADMIN_TABS = new Set(["training"]);
// Tabs only some families of base can use: try-it runs /v1/predict (mlp) and /v1/embeddings
// (hf); chat needs a decoder (causal_lm).
const FAMILY_TABS = { try: new Set(["mlp", "hf"]), chat: new Set(["causal_lm"]) };

function usable(name) {
  if (!(name in tabs)) return false;
  if (ADMIN_TABS.has(name) && !session.canAdmin) return false;
  return !(name in FAMILY_TABS) || FAMILY_TABS[name].has(session.family);
}

function showTab(name) {
  if (!usable(name)) name = "overview";
  for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  for (const button of $$("#tabs button")) {
    button.setAttribute("aria-current", button.dataset.tab === name ? "page" : "false");
  }
  if (current && current !== tabs[name] && current.hide) current.hide();
  current = tabs[name];
  current.show();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function showLogin(message) {
  $("#app").hidden = true;
  $("#tabs").hidden = true;
  $("#who").hidden = true;
  if (current && current.hide) current.hide();
  current = null;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#login-key").focus();
}

async function boot() {
  let me;
  try {
    me = await api("/v1/me");
    session.model = await api("/v1/model");
  } catch (error) {
    if (error.status === 401) {
      showLogin(key.get() ? `That key was refused: ${error.message}.` : "");
      return;
    }
    showLogin(`The service could not be reached: ${explain(error)}`);
    return;
  }
  session.role = me.role;
  session.canAdmin = me.role !== "api";
  document.body.dataset.role = me.role;
  // Admin controls are removed from view for read-only keys; the server refuses them anyway.
  for (const node of $$(".admin")) node.hidden = !session.canAdmin;
  for (const button of $$("#tabs button")) button.hidden = !usable(button.dataset.tab);
  $("#role").textContent = me.auth_enabled
    ? `${me.role === "api" ? "read-only" : me.role} key, project ${me.project}`
    : "auth off";
  $("#forget-key").hidden = !me.auth_enabled;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#tabs").hidden = false;
  $("#who").hidden = false;
  for (const tab of Object.values(tabs)) tab.init();
  showTab(location.hash.slice(1));
}

whenUnauthorized((error) => showLogin(`The key was refused: ${error.message}.`));

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key.set($("#login-key").value.trim());
  $("#login-key").value = "";
  boot();
});
$("#forget-key").addEventListener("click", () => {
  key.clear();
  showLogin("");
});
for (const button of $$("#tabs button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
window.addEventListener("hashchange", () => { if (current) showTab(location.hash.slice(1)); });

boot();
