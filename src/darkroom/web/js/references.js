// The reference-image panel: pictures whose look the generation follows through an IP-Adapter. Each reference is
// sent as an A1111 ControlNet unit with the "ip-adapter-auto" preprocessor (StudioParams.references).

import { CardList, el, fieldError, isIPAdapter, numberField, option, readFile } from "./control.js";

const $ = (id) => document.getElementById(id);

class Reference {
  constructor(panel) {
    this.panel = panel;
    this.image = null; // data URL
    this.enabled = el("input", { type: "checkbox", class: "ref-enabled", checked: true });
    this.title = el("span");
    this.remove = el("button", { type: "button", class: "ref-remove", title: "Remove this reference", text: "✕" });
    this.file = el("input", { type: "file", class: "ref-file", accept: "image/*", hidden: true });
    this.thumb = el("img", { class: "ref-thumb", alt: "reference image" });
    this.model = el("select", { class: "ref-model" });
    this.weight = numberField("Weight", "ref-weight", 1, { min: 0, max: 2, step: 0.05 });
    this.start = numberField("Start", "ref-start", 0, { min: 0, max: 1, step: 0.05 });
    this.end = numberField("End", "ref-end", 1, { min: 0, max: 1, step: 0.05 });
    this.node = el("div", { class: "ref-item unit-card" },
      el("div", { class: "unit-head" }, el("label", { class: "check" }, this.enabled, this.title), this.remove),
      el("div", { class: "ref-body" }, this.thumb,
        el("div", {}, el("label", { class: "button" }, "Choose image…", this.file),
          el("label", { text: "IP-Adapter model" }), this.model)),
      el("div", { class: "grid3" }, this.weight, this.start, this.end));
    this.fillModels();
    this.remove.addEventListener("click", () => panel.remove(this));
    this.enabled.addEventListener("change", () => this.node.classList.toggle("off", !this.enabled.checked));
    this.file.addEventListener("change", async () => {
      const f = this.file.files?.[0];
      this.file.value = "";
      if (!f) return;
      this.image = await readFile(f);
      this.thumb.src = this.image;
    });
  }

  fillModels() {
    const keep = this.model.value;
    this.model.replaceChildren(...this.panel.models.map((m) => option(m)));
    if (this.panel.models.includes(keep)) this.model.value = keep;
  }

  renumber(index) {
    this.title.textContent = `Reference ${index + 1}`;
    this.remove.setAttribute("aria-label", `Remove reference ${index + 1}`);
    const fields = { image: this.thumb, model: this.model, weight: this.weight.querySelector("input"),
      guidance_start: this.start.querySelector("input"), guidance_end: this.end.querySelector("input") };
    for (const [name, node] of Object.entries(fields)) node.dataset.field = `references.${index}.${name}`;
  }

  values() {
    return {
      enabled: this.enabled.checked, model: this.model.value, image: this.image,
      weight: Number(this.weight.querySelector("input").value),
      guidance_start: Number(this.start.querySelector("input").value),
      guidance_end: Number(this.end.querySelector("input").value),
    };
  }
}

export class ReferencePanel extends CardList {
  constructor() {
    super($("ref-items"), () => new Reference(this));
    this.models = [];
    $("ref-add").addEventListener("click", () => this.add());
  }

  /** The IP-Adapter models among the installed control models; without one the panel says what to install. */
  setModels(titles) {
    this.models = titles.filter(isIPAdapter);
    const none = !this.models.length;
    $("ref-hint").hidden = !none;
    $("ref-add").disabled = none;
    for (const r of this.items) r.fillModels();
  }

  /** Every reference for POST /studio/generate; throws a field error for an enabled one without image or model. */
  values() {
    return this.items.map((r, i) => {
      const v = r.values();
      if (v.enabled && !v.image) throw fieldError(`Reference ${i + 1}: choose its image first`, `references.${i}.image`);
      if (v.enabled && !v.model) throw fieldError(`Reference ${i + 1} needs an IP-Adapter model`, `references.${i}.model`);
      return v;
    });
  }
}
