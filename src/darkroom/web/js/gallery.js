// The gallery (everything in output/, newest first, searchable) and the image details dialog.

import { getJSON, postJSON, viewURL } from "./api.js";

const $ = (id) => document.getElementById(id);
const PAGE = 60;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

export class Gallery extends EventTarget {
  constructor() {
    super();
    this.items = [];
    this.total = 0;
    this.query = "";
    this.current = null; // the item shown in the dialog
    this.details = null;
    let timer = null;
    $("gallery-search").addEventListener("input", (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => { this.query = e.target.value; this.refresh(); }, 250);
    });
    $("gallery-more").addEventListener("click", () => this.more());
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail-use").addEventListener("click", () => this.#emit("use"));
    $("detail-img2img").addEventListener("click", () => this.#emit("img2img"));
    $("detail-inpaint").addEventListener("click", () => this.#emit("inpaint"));
    $("detail-workflow").addEventListener("click", () => this.#emit("workflow"));
    $("detail-delete").addEventListener("click", () => this.#confirmDelete());
    $("confirm-no").addEventListener("click", () => $("confirm").close());
    $("confirm-yes").addEventListener("click", () => this.#delete());
  }

  #emit(action) {
    if (!this.current || !this.details) return;
    this.dispatchEvent(new CustomEvent(action, { detail: { item: this.current, details: this.details } }));
    $("detail").close();
  }

  async refresh() {
    const q = new URLSearchParams({ q: this.query, offset: "0", limit: String(PAGE) });
    const page = await getJSON(`/studio/gallery?${q}`);
    this.items = page.items;
    this.total = page.total;
    this.#render();
  }

  async more() {
    const q = new URLSearchParams({ q: this.query, offset: String(this.items.length), limit: String(PAGE) });
    const page = await getJSON(`/studio/gallery?${q}`);
    this.items.push(...page.items);
    this.total = page.total;
    this.#render();
  }

  #render() {
    const grid = $("gallery-grid");
    const cards = this.items.map((item) => {
      const img = el("img", { src: item.thumb, alt: item.prompt || item.filename, loading: "lazy" });
      const button = el("button", { type: "button", class: "thumb", title: item.prompt || item.filename,
        "data-filename": item.filename, "data-subfolder": item.subfolder }, img);
      button.addEventListener("click", () => this.open(item));
      return button;
    });
    grid.replaceChildren(...cards);
    if (!cards.length) {
      grid.append(el("p", { class: "hint", text: this.query ? "No image matches this search." : "Nothing made yet: your images will be listed here." }));
    }
    $("gallery-count").textContent = this.query ? `${this.total} found` : `${this.total} image${this.total === 1 ? "" : "s"}`;
    $("gallery-more").hidden = this.items.length >= this.total;
  }

  /** Show an image with all its parameters. */
  async open(item) {
    this.current = item;
    this.details = null;
    const dialog = $("detail");
    $("detail-image").src = item.url;
    $("detail-image").alt = item.prompt || item.filename;
    $("detail-title").textContent = item.filename;
    $("detail-download").href = item.url;
    $("detail-download").setAttribute("download", item.filename);
    $("detail-prompt").textContent = "…";
    $("detail-negative").textContent = "";
    $("detail-fields").replaceChildren();
    if (!dialog.open) dialog.showModal();
    const q = new URLSearchParams({ filename: item.filename, subfolder: item.subfolder });
    const details = await getJSON(`/studio/image?${q}`);
    if (this.current !== item) return;
    this.details = details;
    this.showDetails(details);
  }

  /** Fill the dialog's parameter area from /studio/image or /studio/png-info. */
  showDetails(d) {
    $("detail-source").textContent = d.source ? `made by ${d.source} · ${d.width} × ${d.height}` : `${d.width} × ${d.height}, no generation parameters`;
    $("detail-prompt").textContent = d.prompt || "(no prompt)";
    $("detail-negative").textContent = d.negative_prompt || "";
    $("detail-negative-row").hidden = !d.negative_prompt;
    const rows = d.fields.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: v })));
    $("detail-fields").replaceChildren(...rows);
    $("detail-warnings").textContent = (d.warnings || []).join(" ");
    $("detail-use").disabled = !d.settings;
    $("detail-workflow").disabled = !d.workflow;
  }

  #confirmDelete() {
    if (!this.current) return;
    $("confirm-text").textContent = `Delete ${this.current.filename} for good? The file is removed from the output folder.`;
    $("confirm").showModal();
  }

  async #delete() {
    const item = this.current;
    $("confirm").close();
    if (!item) return;
    await postJSON("/studio/delete", { filename: item.filename, subfolder: item.subfolder });
    $("detail").close();
    this.current = null;
    this.dispatchEvent(new CustomEvent("deleted", { detail: { item } }));
    await this.refresh();
  }
}

export { viewURL };
