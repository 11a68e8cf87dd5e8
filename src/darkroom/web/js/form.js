// The settings form: reading and writing values, options from the server, presets, seed and prompt helpers.

const $ = (id) => document.getElementById(id);
const STORE_KEY = "darkroom.studio.form";
const NUMBER_FIELDS = ["steps", "cfg", "width", "height", "seed", "batch_size", "clip_skip", "denoise", "mask_blur", "padding"];
const TEXT_FIELDS = ["prompt", "negative_prompt", "model", "sampler", "scheduler"];
const CHOICE_FIELDS = ["inpaint_area", "masked_content"];

export const DEFAULTS = {
  prompt: "", negative_prompt: "", sampler: "euler", scheduler: "normal", steps: 20, cfg: 7, width: 512,
  height: 512, seed: -1, batch_size: 1, clip_skip: 1, mode: "txt2img", denoise: 0.75, mask_blur: 4,
  inpaint_area: "whole", masked_content: "original", padding: 32,
};

function option(value, label = value) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = label;
  return el;
}

function stem(name) {
  const base = name.split("/").pop();
  return base.replace(/\.(safetensors|sft|ckpt|pt|pth|bin)$/i, "");
}

export class SettingsForm {
  constructor() {
    this.options = null;
    this.onChange = () => {};
    $("form").addEventListener("input", () => this.save());
    $("form").addEventListener("change", () => { this.save(); this.onChange(); });
    $("swap-size").addEventListener("click", () => {
      const w = $("width").value;
      $("width").value = $("height").value;
      $("height").value = w;
      this.save();
    });
    $("size-preset").addEventListener("change", (e) => {
      const [w, h] = e.target.value.split("x").map(Number);
      if (w && h) this.set({ width: w, height: h });
      e.target.value = "";
    });
    $("seed-random").addEventListener("click", () => this.set({ seed: -1 }));
    $("lora-insert").addEventListener("click", () => {
      const name = $("lora-pick").value;
      if (name) this.insertIntoPrompt(`<lora:${stem(name)}:1>`);
    });
    $("emb-insert").addEventListener("click", () => {
      const name = $("emb-pick").value;
      if (name) this.insertIntoPrompt(stem(name));
    });
    for (const id of ["denoise", "mask_blur"]) {
      const range = $(`${id}-range`);
      range.addEventListener("input", () => { $(id).value = range.value; this.save(); });
      $(id).addEventListener("input", () => { range.value = $(id).value; });
    }
  }

  /** Fill the pickers from GET /studio/options. */
  setOptions(options) {
    this.options = options;
    const model = $("model");
    model.replaceChildren(...options.checkpoints.map((c) => option(c.name, `${stem(c.name)} — ${c.label}${c.builtin ? " (built-in)" : ""}`)));
    if (!options.checkpoints.length) model.append(option("", "no checkpoint installed"));
    $("sampler").replaceChildren(...options.samplers.map((s) => option(s)));
    $("scheduler").replaceChildren(...options.schedulers.map((s) => option(s)));
    const loras = $("lora-pick");
    loras.replaceChildren(option("", options.loras.length ? "LoRA…" : "no LoRAs installed"), ...options.loras.map((n) => option(n, stem(n))));
    loras.disabled = $("lora-insert").disabled = !options.loras.length;
    const embs = $("emb-pick");
    embs.replaceChildren(option("", options.embeddings.length ? "Embedding…" : "no embeddings installed"), ...options.embeddings.map((n) => option(n, stem(n))));
    embs.disabled = $("emb-insert").disabled = !options.embeddings.length;
    const presets = $("size-preset");
    presets.replaceChildren(option("", "Presets…"));
    for (const [family, sizes] of Object.entries(options.size_presets)) {
      const group = document.createElement("optgroup");
      group.label = family;
      group.append(...sizes.map(([w, h]) => option(`${w}x${h}`, `${w} × ${h}`)));
      presets.append(group);
    }
    for (const id of ["width", "height"]) $(id).max = options.limits[`max_${id}`];
    $("steps").max = options.limits.max_steps;
    $("batch_size").max = options.limits.max_batch_size;
  }

  checkpoint(name) {
    return this.options?.checkpoints.find((c) => c.name === name) || null;
  }

  get mode() {
    return document.querySelector("input[name=mode]:checked")?.value || "txt2img";
  }

  set mode(value) {
    const radio = document.querySelector(`input[name=mode][value="${value}"]`);
    if (radio) radio.checked = true;
  }

  /** The values as POST /studio/generate takes them (without images). */
  values() {
    const out = { mode: this.mode };
    for (const f of TEXT_FIELDS) out[f] = $(f).value;
    for (const f of NUMBER_FIELDS) out[f] = Number($(f).value);
    for (const f of CHOICE_FIELDS) out[f] = document.querySelector(`input[name=${f}]:checked`)?.value || DEFAULTS[f];
    if (!out.model) delete out.model;
    if (!Number.isFinite(out.seed) || $("seed").value.trim() === "") out.seed = -1;
    return out;
  }

  /** Set some fields (unknown models/samplers are added to their list so nothing is silently changed). */
  set(values) {
    for (const [key, value] of Object.entries(values)) {
      if (value === undefined || value === null) continue;
      if (key === "mode") { this.mode = value; continue; }
      if (CHOICE_FIELDS.includes(key)) {
        const radio = document.querySelector(`input[name=${key}][value="${value}"]`);
        if (radio) radio.checked = true;
        continue;
      }
      const el = $(key);
      if (!el) continue;
      if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === String(value))) {
        el.append(option(String(value), `${value} (not installed)`));
      }
      el.value = String(value);
      const range = $(`${key}-range`);
      if (range) range.value = String(value);
    }
    this.save();
    this.onChange();
  }

  /** Insert text at the prompt's cursor, separated by spaces/commas as needed. */
  insertIntoPrompt(text) {
    const box = $("prompt");
    const start = box.selectionStart ?? box.value.length;
    const end = box.selectionEnd ?? start;
    const before = box.value.slice(0, start);
    const after = box.value.slice(end);
    const pre = before && !/[\s,(]$/.test(before) ? ", " : "";
    const post = after && !/^[\s,)]/.test(after) ? " " : "";
    box.value = before + pre + text + post + after;
    const pos = (before + pre + text).length;
    box.focus();
    box.setSelectionRange(pos, pos);
    this.save();
  }

  save() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(this.values()));
    } catch {
      /* private mode: nothing to keep */
    }
  }

  /** Restore the last session's values (or the defaults); returns whether something was stored. */
  restore() {
    let stored = null;
    try {
      stored = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    } catch {
      stored = null;
    }
    const values = { ...DEFAULTS, ...(stored || {}) };
    if (this.options && !this.checkpoint(values.model)) values.model = this.options.default_model || "";
    this.set(values);
    return stored !== null;
  }
}
