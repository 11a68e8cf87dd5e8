// The control panel: ControlNet units (an uploaded, drawn or posed control image, a preprocessor with a live
// preview of its map, model, weight, start/end, control and resize modes). Each unit becomes one A1111 ControlNet
// unit of the generate request (StudioParams.controlnet).

import { postJSON } from "./api.js";
import { makeCanvas, StrokePad } from "./canvas.js";
import { PoseEditor } from "./pose.js";

const $ = (id) => document.getElementById(id);
const PREVIEW_DELAY = 250; // ms of quiet before the preview is asked for again
const CONTROL_MODES = ["Balanced", "My prompt is more important", "ControlNet is more important"];
const RESIZE_MODES = ["Crop and Resize", "Just Resize", "Resize and Fill"];
const SLIDER_FIELDS = ["processor_res", "threshold_a", "threshold_b"];
const PAD_MAX = 384; // the drawing pad's longer side, in pixels

/** Whether a control model title names an IP-Adapter file (those belong to the reference panel). */
export const isIPAdapter = (name) => /ip[-_]adapter/i.test(name);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children);
  return node;
}

export function option(value, label = value) {
  return el("option", { value, text: label });
}

/** A labelled number input for a unit field (its `data-field` lets a server error point at it). */
export function numberField(label, cls, value, { min, max, step }) {
  const input = el("input", { type: "number", class: cls, value, min, max, step });
  return el("label", { class: "field" }, el("span", { text: label }), input);
}

export function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

/** An Error the page shows next to a field (`field`: a `data-field` value or an element id). */
export function fieldError(message, field) {
  return Object.assign(new Error(message), { field });
}

class ControlUnit {
  constructor(panel) {
    this.panel = panel;
    this.source = "upload";
    this.uploadURL = null; // the uploaded picture (data URL)
    this.poseURL = null; // the server's drawing of the pose (data URL)
    this.timer = null;
    this.seq = 0;
    this.pending = Promise.resolve();
    this.#build();
  }

  #build() {
    const p = this.panel;
    this.enabled = el("input", { type: "checkbox", class: "cn-enabled", checked: true });
    this.title = el("span", { class: "cn-title" });
    this.remove = el("button", { type: "button", class: "cn-remove", title: "Remove this unit", text: "✕" });
    this.sourceButtons = ["upload", "draw", "pose"].map((s) => el("button", { type: "button", "data-source": s,
      "aria-pressed": String(s === this.source), text: { upload: "Upload", draw: "Draw", pose: "Pose" }[s] }));
    this.file = el("input", { type: "file", class: "cn-file", accept: "image/*", hidden: true });
    this.uploadBox = el("div", { class: "cn-upload" }, el("label", { class: "button" }, "Choose image…", this.file));

    const [w, h] = padSize(p.width, p.height);
    this.pad = makeCanvas(w, h);
    this.pad.className = "cn-pad";
    this.brush = el("input", { type: "range", class: "cn-brush", min: 1, max: 40, value: 6, "aria-label": "Pen size" });
    this.clearPad();
    new StrokePad(this.pad, {
      style: () => ({ color: "#000", width: Number(this.brush.value), erase: false }),
      onEnd: () => this.refresh(),
    });
    const clear = el("button", { type: "button", class: "cn-clear", text: "Clear" });
    clear.addEventListener("click", () => { this.clearPad(); this.refresh(); });
    this.drawBox = el("div", { class: "cn-draw", hidden: true }, this.pad,
      el("div", { class: "row" }, el("span", { class: "muted", text: "Pen" }), this.brush, clear));

    this.poseEditor = new PoseEditor(p.width, p.height);
    const reset = el("button", { type: "button", class: "cn-pose-reset", text: "Reset pose" });
    reset.addEventListener("click", () => this.poseEditor.reset());
    this.poseEditor.addEventListener("change", () => this.refresh());
    this.poseBox = el("div", { class: "cn-pose", hidden: true }, this.poseEditor.element,
      el("div", { class: "row" }, el("span", { class: "muted", text: "Drag the joints." }), reset));

    this.input = el("img", { class: "cn-input", alt: "control image" });
    this.preview = el("img", { class: "cn-preview", alt: "preprocessor output" });
    this.status = el("p", { class: "cn-status muted", "aria-live": "polite" });
    this.module = el("select", { class: "cn-module" });
    this.sliders = el("div", { class: "cn-sliders grid2" });
    this.model = el("select", { class: "cn-model" });
    this.weight = numberField("Weight", "cn-weight", 1, { min: 0, max: 2, step: 0.05 });
    this.start = numberField("Start", "cn-start", 0, { min: 0, max: 1, step: 0.05 });
    this.end = numberField("End", "cn-end", 1, { min: 0, max: 1, step: 0.05 });
    this.mode = el("select", { class: "cn-mode" }, ...CONTROL_MODES.map((m) => option(m)));
    this.resize = el("select", { class: "cn-resize" }, ...RESIZE_MODES.map((m) => option(m)));

    this.node = el("div", { class: "cn-unit unit-card" },
      el("div", { class: "unit-head" }, el("label", { class: "check" }, this.enabled, this.title), this.remove),
      el("div", { class: "cn-source seg", role: "group", "aria-label": "Control image from" }, ...this.sourceButtons),
      this.uploadBox, this.drawBox, this.poseBox,
      el("div", { class: "cn-images" },
        el("figure", {}, this.input, el("figcaption", { text: "Input" })),
        el("figure", {}, this.preview, el("figcaption", { text: "Preprocessor output" }))),
      this.status,
      el("label", { text: "Preprocessor" }), this.module, this.sliders,
      el("label", { text: "Model" }), this.model,
      el("div", { class: "grid3" }, this.weight, this.start, this.end),
      el("div", { class: "grid2" },
        el("label", { class: "field" }, el("span", { text: "Control mode" }), this.mode),
        el("label", { class: "field" }, el("span", { text: "Resize mode" }), this.resize)));

    this.fillOptions();
    this.remove.addEventListener("click", () => p.remove(this));
    for (const b of this.sourceButtons) b.addEventListener("click", () => this.setSource(b.dataset.source));
    this.file.addEventListener("change", async () => {
      const f = this.file.files?.[0];
      this.file.value = "";
      if (!f) return;
      try {
        this.uploadURL = await readFile(f);
      } catch (err) {
        this.status.textContent = err.message;
        return;
      }
      this.refresh(0);
    });
    this.module.addEventListener("change", () => { this.#fillSliders(); this.refresh(0); });
    this.sliders.addEventListener("input", () => this.refresh());
    this.enabled.addEventListener("change", () => {
      this.node.classList.toggle("off", !this.enabled.checked);
      p.renumber();
    });
  }

  /** Preprocessor and model choices from the panel (kept when still offered). */
  fillOptions() {
    const p = this.panel;
    const module = this.module.value || "none";
    this.module.replaceChildren(...p.modules.map((m) => option(m, p.moduleDetail[m]?.builtin === false
      ? `${m} (needs annotator weights)` : m)));
    this.module.value = p.modules.includes(module) ? module : "none";
    const model = this.model.value;
    const models = p.controlModels();
    this.model.replaceChildren(...(models.length ? models.map((m) => option(m))
      : [option("", "no ControlNet model installed")]));
    if (models.includes(model)) this.model.value = model;
    this.model.disabled = !models.length;
    this.#fillSliders();
  }

  /** Inputs for the preprocessor's sliders (resolution, thresholds); values kept while the module stays. */
  #fillSliders() {
    const module = this.module.value;
    if (module === this.slidersFor) return;
    this.slidersFor = module;
    const sliders = this.panel.moduleDetail[module]?.sliders || [];
    const fields = [];
    sliders.forEach((s, i) => {
      if (!s || i >= SLIDER_FIELDS.length) return;
      const f = numberField(s.name, `cn-${SLIDER_FIELDS[i]}`, s.value, { min: s.min, max: s.max, step: s.step ?? 1 });
      f.querySelector("input").dataset.name = SLIDER_FIELDS[i];
      fields.push(f);
    });
    this.sliders.replaceChildren(...fields);
    this.renumber(this.index ?? 0);
  }

  /** Where this unit sits in the panel: its title and the fields a server error may name. */
  renumber(index) {
    this.index = index;
    this.title.textContent = `Unit ${index + 1}`;
    this.remove.setAttribute("aria-label", `Remove unit ${index + 1}`);
    const fields = { module: this.module, model: this.model, image: this.node.querySelector(".cn-images"),
      weight: this.weight.querySelector("input"), guidance_start: this.start.querySelector("input"),
      guidance_end: this.end.querySelector("input"), control_mode: this.mode, resize_mode: this.resize };
    for (const input of this.sliders.querySelectorAll("input")) fields[input.dataset.name] = input;
    for (const [name, node] of Object.entries(fields)) node.dataset.field = `controlnet.${index}.${name}`;
  }

  setSource(source) {
    this.source = source;
    for (const b of this.sourceButtons) b.setAttribute("aria-pressed", String(b.dataset.source === source));
    this.uploadBox.hidden = source !== "upload";
    this.drawBox.hidden = source !== "draw";
    this.poseBox.hidden = source !== "pose";
    this.module.disabled = source === "pose"; // the server draws the pose: it is the control map already
    if (source === "pose") {
      this.module.value = "none";
      const pose = this.panel.controlModels().find((m) => /openpose|pose/i.test(m));
      if (pose) this.model.value = pose;
    } else if (source === "draw" && this.module.value === "none") {
      this.module.value = "scribble_drawing";
    }
    this.#fillSliders();
    this.refresh(0);
  }

  clearPad() {
    const ctx = this.pad.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.pad.width, this.pad.height);
  }

  setSize(width, height) {
    this.poseEditor.setSize(width, height);
    if (this.source === "pose") this.refresh();
  }

  /** The picture the unit starts from (data URL), or null. */
  inputURL() {
    if (this.source === "upload") return this.uploadURL;
    if (this.source === "draw") return this.pad.toDataURL("image/png");
    return this.poseURL;
  }

  #sliderValues() {
    const out = { processor_res: -1, threshold_a: -1, threshold_b: -1 };
    for (const input of this.sliders.querySelectorAll("input")) out[input.dataset.name] = Number(input.value);
    return out;
  }

  /** Ask for a new preview (pose: a new drawing of the pose) after `delay` ms of quiet. */
  refresh(delay = PREVIEW_DELAY) {
    clearTimeout(this.timer);
    const seq = ++this.seq;
    this.pending = new Promise((resolve) => {
      this.timer = setTimeout(() => this.#update(seq).finally(resolve), delay);
    });
    return this.pending;
  }

  async #update(seq) {
    const stale = () => seq !== this.seq;
    this.status.textContent = "";
    if (this.source === "pose") {
      this.status.textContent = "Drawing the pose…";
      const res = await postJSON("/controlnet/render_openpose_json", [this.poseEditor.pose()])
        .catch((err) => ({ error: err.message }));
      if (stale()) return;
      if (!res.images) {
        this.status.textContent = res.error || res.info || "the pose could not be drawn";
        return;
      }
      this.poseURL = `data:image/png;base64,${res.images[0]}`;
      this.input.src = this.preview.src = this.poseURL;
      this.status.textContent = "";
      return;
    }
    const input = this.inputURL();
    if (!input) {
      this.input.removeAttribute("src");
      this.preview.removeAttribute("src");
      return;
    }
    this.input.src = input;
    if (this.module.value === "none") {
      this.preview.src = input;
      return;
    }
    this.status.textContent = `Running ${this.module.value}…`;
    const res = await postJSON("/controlnet/detect", {
      controlnet_module: this.module.value, controlnet_input_images: [input.split(",", 2)[1]],
      controlnet_processor_res: this.#sliderValues().processor_res,
      controlnet_threshold_a: this.#sliderValues().threshold_a, controlnet_threshold_b: this.#sliderValues().threshold_b,
    }).catch((err) => ({ error: err.message }));
    if (stale()) return;
    if (!res.images) {
      this.preview.removeAttribute("src");
      this.status.textContent = res.error || "no preview";
      return;
    }
    this.preview.src = `data:image/png;base64,${res.images[0]}`;
    this.status.textContent = "";
  }

  /** The unit as POST /studio/generate takes it (awaits a pose still being drawn). */
  async values() {
    if (this.source === "pose") await this.pending;
    const image = this.inputURL();
    return {
      enabled: this.enabled.checked, model: this.model.value, module: this.source === "pose" ? "none" : this.module.value,
      ...(image ? { image } : {}), weight: Number(this.weight.querySelector("input").value),
      guidance_start: Number(this.start.querySelector("input").value),
      guidance_end: Number(this.end.querySelector("input").value), control_mode: this.mode.value,
      resize_mode: this.resize.value, ...this.#sliderValues(),
    };
  }
}

/** The drawing pad's size for a generation size: same shape, longer side PAD_MAX. */
function padSize(width, height) {
  const k = PAD_MAX / Math.max(width, height);
  return [Math.max(16, Math.round(width * k)), Math.max(16, Math.round(height * k))];
}

/** Cards in a list (ControlNet units, references), numbered in order; `make()` builds one card. */
export class CardList {
  constructor(list, make) {
    this.items = [];
    this.list = list;
    this.make = make;
  }

  add() {
    const item = this.make();
    this.items.push(item);
    this.list.append(item.node);
    this.renumber();
    return item;
  }

  remove(item) {
    this.items = this.items.filter((i) => i !== item);
    item.node.remove();
    this.renumber();
  }

  renumber() {
    this.items.forEach((item, i) => item.renumber(i));
  }
}

export class ControlPanel extends CardList {
  constructor() {
    super($("cn-units"), () => new ControlUnit(this));
    this.models = []; // every control model title (/controlnet/model_list)
    this.modules = ["none"];
    this.moduleDetail = {};
    this.width = 512;
    this.height = 512;
    $("cn-add").addEventListener("click", () => this.add());
  }

  /** Read the installed control models and the preprocessors. */
  async load(getJSON) {
    const [models, modules] = await Promise.all([getJSON("/controlnet/model_list"), getJSON("/controlnet/module_list")]);
    this.models = models.model_list || [];
    this.modules = (modules.module_list || ["none"]).filter((m) => !isIPAdapter(m)); // references use those
    this.moduleDetail = modules.module_detail || {};
    const none = !this.controlModels().length;
    $("cn-hint").hidden = !none;
    for (const u of this.items) u.fillOptions();
  }

  /** ControlNet / T2I-Adapter titles (IP-Adapters go to the reference panel). */
  controlModels() {
    return this.models.filter((m) => !isIPAdapter(m));
  }

  renumber() {
    super.renumber();
    $("cn-count").textContent = this.items.length ? `${this.items.filter((u) => u.enabled.checked).length} on` : "";
  }

  /** Follow the generation size (pose canvases are drawn at it). */
  setSize(width, height) {
    if (!(width > 0 && height > 0) || (width === this.width && height === this.height)) return;
    this.width = width;
    this.height = height;
    for (const u of this.items) u.setSize(width, height);
  }

  /** Every unit for POST /studio/generate; throws a field error for an enabled unit that cannot run. */
  async values(mode) {
    const out = [];
    for (const [i, u] of this.items.entries()) {
      const v = await u.values();
      if (v.enabled && !v.model) {
        throw fieldError(`ControlNet unit ${i + 1} needs a model: put ControlNet models in models/controlnet`,
          `controlnet.${i}.model`);
      }
      if (v.enabled && !v.image && mode === "txt2img") {
        throw fieldError(`ControlNet unit ${i + 1}: upload, draw or pose its control image first`, `controlnet.${i}.image`);
      }
      out.push(v);
    }
    return out;
  }
}
