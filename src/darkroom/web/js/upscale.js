// The image viewer's Upscale action: an upscaler (built-in resize or an installed model) and a scale make a new,
// larger image in the gallery (POST /studio/upscale); when the server offers A1111's "SD upscale" script, the
// picture can also be redrawn in tiles with image to image (queued like any generation).

import { getJSON, postJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const SD_UPSCALE = "sd-upscale"; // the method value of the tiled img2img option

function option(value, label = value) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

async function dataURLOf(url) {
  const blob = await (await fetch(url, { cache: "no-store" })).blob();
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read the image"));
    reader.readAsDataURL(blob);
  });
}

const round8 = (v) => Math.max(64, Math.round(v / 8) * 8);

/** The tile overlap asked for, as A1111's SD upscale takes it: a multiple of 8, at most half the tile. */
function overlapFor(width, height) {
  const top = Math.floor(Math.min(width, height) / 2 / 8) * 8;
  return Math.min(top, Math.max(0, Math.floor(Number($("upscale-overlap").value) / 8) * 8));
}

/**
 * Events: "upscaled" (detail: the new image's gallery reference, from /studio/upscale), "sd-upscale"
 * (detail: POST /studio/generate values to queue), "error" (detail: {message}).
 */
export class UpscaleAction extends EventTarget {
  constructor(gallery) {
    super();
    this.gallery = gallery;
    this.upscalers = [];
    this.sdUpscale = false;
    $("detail-upscale").addEventListener("click", () => this.toggle());
    $("upscale-method").addEventListener("change", () => this.#showMethod());
    $("upscale-run").addEventListener("click", () => this.run());
    $("detail").addEventListener("close", () => { $("upscale-form").hidden = true; });
  }

  /** Upscalers from /sdapi/v1/upscalers, and whether /sdapi/v1/scripts lists "SD upscale" for img2img. */
  async load() {
    const [rows, scripts] = await Promise.all([getJSON("/sdapi/v1/upscalers"),
      getJSON("/sdapi/v1/scripts").catch(() => ({}))]);
    this.upscalers = rows.map((r) => r.name).filter((n) => n !== "None");
    this.sdUpscale = (scripts.img2img || []).some((s) => String(s).toLowerCase() === "sd upscale");
    const method = $("upscale-method");
    method.replaceChildren(...this.upscalers.map((n) => option(n)));
    if (this.sdUpscale) method.append(option(SD_UPSCALE, "SD upscale (tiled img2img)"));
    $("upscale-sd-upscaler").replaceChildren(...this.upscalers.map((n) => option(n)));
    this.#showMethod();
  }

  toggle() {
    const box = $("upscale-form");
    box.hidden = !box.hidden;
    $("upscale-status").textContent = "";
    if (!box.hidden) $("upscale-method").focus();
  }

  #showMethod() {
    $("upscale-sd-options").hidden = $("upscale-method").value !== SD_UPSCALE;
  }

  #fail(message, field) {
    document.querySelectorAll("#upscale-form .invalid").forEach((n) => n.classList.remove("invalid"));
    const target = { upscaler: "upscale-method", scale: "upscale-scale", "sd_upscale.upscaler": "upscale-sd-upscaler",
      denoise: "upscale-denoise", sd_upscale: "upscale-overlap" }[field];
    if (target) $(target).classList.add("invalid");
    $("upscale-status").textContent = message;
    this.dispatchEvent(new CustomEvent("error", { detail: { message } }));
  }

  async run() {
    const item = this.gallery.current;
    if (!item) return;
    const method = $("upscale-method").value;
    const scale = Number($("upscale-scale").value);
    $("upscale-run").disabled = true;
    try {
      if (method === SD_UPSCALE) await this.#sdUpscale(item, scale);
      else await this.#upscale(item, method, scale);
    } catch (err) {
      this.#fail(err.message, err.field);
    } finally {
      $("upscale-run").disabled = false;
    }
  }

  async #upscale(item, upscaler, scale) {
    $("upscale-status").textContent = `Upscaling with ${upscaler}…`;
    const ref = await postJSON("/studio/upscale", { filename: item.filename, subfolder: item.subfolder, upscaler, scale });
    $("upscale-status").textContent = `Made ${ref.filename} (${ref.width} × ${ref.height}).`;
    this.dispatchEvent(new CustomEvent("upscaled", { detail: ref }));
  }

  async #sdUpscale(item, scale) {
    const details = this.gallery.details || {};
    const settings = details.settings || {};
    // A1111's SD upscale redraws tiles of the generation size: the image's own size when it names none
    const width = round8(settings.width || details.width || 512);
    const height = round8(settings.height || details.height || 512);
    const values = {
      ...settings, mode: "img2img", width, height, batch_size: 1, init_image: await dataURLOf(item.url),
      denoise: Number($("upscale-denoise").value),
      sd_upscale: { upscaler: $("upscale-sd-upscaler").value, scale, overlap: overlapFor(width, height) },
    };
    $("upscale-status").textContent = "Queued SD upscale…";
    this.dispatchEvent(new CustomEvent("sd-upscale", { detail: values }));
  }
}
