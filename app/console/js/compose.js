// The composition builder of the try-it and chat tabs: rows of an adapter, a slider and a number
// box kept in step; its value is a composition as the API takes it ([{name, scale}]).
import { $, $$, el } from "./dom.js";

const MAX_SCALE = 2; // the sliders' range; the API takes up to 16 (type it in the number box)

/** A builder whose rows live in `rows` (an element); `setNames` gives the adapters to pick. */
export function composer(rows) {
  let names = [];
  const fill = (select, chosen) => select.replaceChildren(
    ...names.map((n) => el("option", { value: n, text: n, selected: n === chosen })));
  return {
    setNames(list) {
      names = list;
      for (const select of $$("select", rows)) fill(select, select.value);
    },
    add() {
      const select = el("select", { class: "compose-name", "aria-label": "Adapter" });
      fill(select, names[0]);
      const number = el("input", { type: "number", class: "compose-scale", step: "0.05", min: "-16", max: "16", value: "1", "aria-label": "Scale" });
      const slider = el("input", { type: "range", min: String(-MAX_SCALE), max: String(MAX_SCALE), step: "0.05", value: "1", "aria-label": "Scale slider" });
      slider.addEventListener("input", () => { number.value = slider.value; });
      number.addEventListener("input", () => { slider.value = number.value; });
      const remove = el("button", { type: "button", text: "Remove" });
      const row = el("div", { class: "bar compose-row" }, select, slider, number, remove);
      remove.addEventListener("click", () => row.remove());
      rows.append(row);
    },
    /** The composition built; null when it has no adapter. */
    value() {
      const entries = $$(".compose-row", rows).map((row) => ({
        name: $("select", row).value, scale: Number($(".compose-scale", row).value),
      })).filter((e) => e.name);
      return entries.length ? entries : null;
    },
  };
}

/** How a composition is named on the page: "composition a×0.5 + b×-1". */
export function compositionName(entries) {
  return `composition ${entries.map((e) => `${e.name}×${e.scale}`).join(" + ")}`;
}
