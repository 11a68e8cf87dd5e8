// The studio page: settings form, generation with live progress, canvas, gallery, drops and keyboard.

import { getJSON, postJSON, request, ServerEvents, viewURL } from "./api.js";
import { CanvasEditor } from "./canvas.js";
import { ControlPanel } from "./control.js";
import { SettingsForm } from "./form.js";
import { Gallery } from "./gallery.js";
import { ReferencePanel } from "./references.js";
import { UpscaleAction } from "./upscale.js";

const $ = (id) => document.getElementById(id);
const OPEN_WORKFLOW_KEY = "darkroom.openWorkflow"; // read by the node editor's studio-bridge extension

const events = new ServerEvents();
const form = new SettingsForm();
const canvas = new CanvasEditor();
const gallery = new Gallery();
const controls = new ControlPanel();
const references = new ReferencePanel();
const upscale = new UpscaleAction(gallery);

/** Jobs this page queued: prompt_id → {count, seeds, started, done}. */
const jobs = new Map();
let running = null; // prompt_id running now (one of ours)
let lastSeed = null;
let previewURL = null;

// -- small UI helpers -----------------------------------------------------------------------------------------

let toastTimer = null;
function toast(message, kind = "info", action = null) {
  const box = $("toast");
  box.className = `toast show ${kind}`;
  box.replaceChildren(document.createTextNode(message));
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = action.label;
    b.addEventListener("click", () => { box.className = "toast"; action.run(); });
    box.append(" ", b);
  }
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.className = "toast"; }, action ? 9000 : 5000);
}

/** The element an error's field names: an id, or a control/reference unit's `data-field`. */
function fieldElement(field) {
  if (!field) return null;
  return $(field) || document.querySelector(`[data-field="${CSS.escape(field)}"]`)
    || document.querySelector(`[data-field^="${CSS.escape(field)}."]`);
}

function fieldError(err) {
  document.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  const el = fieldElement(err.field);
  if (el) {
    const group = el.closest("details");
    if (group) group.open = true;
    el.classList.add("invalid");
    el.focus();
  }
  toast(err.message, "error");
}

function showTab(name) {
  const output = name === "output";
  $("tab-output").setAttribute("aria-selected", String(output));
  $("tab-canvas").setAttribute("aria-selected", String(!output));
  $("output-view").hidden = !output;
  $("canvas-view").hidden = output;
}

function setProgress(fraction, text) {
  $("bar-fill").style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  $("progress").setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
  $("progress-text").textContent = text;
}

function updateBusy() {
  const mine = [...jobs.values()].filter((j) => !j.finished).length;
  $("cancel").disabled = mine === 0;
  document.body.classList.toggle("busy", mine > 0);
}

function showImages(refs) {
  const out = $("output");
  const figures = refs.map((ref) => {
    const img = document.createElement("img");
    img.src = viewURL(ref);
    img.alt = "generated image";
    img.className = "result";
    img.addEventListener("click", () => gallery.open({ ...ref, url: viewURL(ref), prompt: "" }));
    return img;
  });
  out.replaceChildren(...figures);
  out.classList.toggle("many", refs.length > 1);
}

function showPreview(blob) {
  if (previewURL) URL.revokeObjectURL(previewURL);
  previewURL = URL.createObjectURL(blob);
  let img = $("live-preview");
  if (!img) {
    img = document.createElement("img");
    img.id = "live-preview";
    img.alt = "step preview";
    img.className = "result preview";
    $("output").replaceChildren(img);
  }
  img.src = previewURL;
}

// -- generating -------------------------------------------------------------------------------------------------

async function settings() {
  const values = form.values();
  values.client_id = events.clientId;
  values.controlnet = await controls.values(values.mode);
  values.references = references.values();
  if (values.mode !== "txt2img") {
    if (!canvas.hasImage) throw Object.assign(new Error("Load or drop an image on the canvas first."), { field: "load-image" });
    values.init_image = canvas.imageDataURL();
    if (values.mode === "inpaint") {
      if (!canvas.hasMask()) throw Object.assign(new Error("Paint a mask over the part to change first (Canvas tab)."), { field: null });
      values.mask = canvas.maskDataURL();
    }
  }
  return values;
}

async function generate() {
  let values;
  try {
    values = await settings();
  } catch (err) {
    const unitField = /^(controlnet|references)\./.test(err.field || "");
    if (!unitField && form.mode !== "txt2img") showTab("canvas");
    fieldError(err);
    return;
  }
  await queue(values);
}

/** Queue POST /studio/generate values; the job is followed over the websocket like every generation. */
async function queue(values) {
  $("generate").disabled = true;
  try {
    const res = await postJSON("/studio/generate", values);
    jobs.set(res.prompt_id, { count: res.count, seeds: res.seeds, started: 0, finished: false });
    if (res.seeds?.length) lastSeed = res.seeds[0];
    document.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
    if (!running) setProgress(0, "Queued…");
    showTab("output");
  } catch (err) {
    fieldError(err);
  } finally {
    $("generate").disabled = false;
    updateBusy();
  }
}

async function cancel() {
  const mine = [...jobs.entries()].filter(([, j]) => !j.finished).map(([id]) => id);
  if (!mine.length) return;
  const pending = mine.filter((id) => id !== running);
  if (pending.length) await postJSON("/queue", { delete: pending });
  // interrupt by id: only the one actually running stops (it may have started before its first event arrived)
  await Promise.all(mine.map((id) => postJSON("/interrupt", { prompt_id: id })));
  for (const id of pending) finish(id, "cancelled");
  setProgress(0, "Cancelling…");
}

function finish(id, how, message = "") {
  const job = jobs.get(id);
  if (!job || job.finished) return;
  job.finished = true;
  if (running === id) running = null;
  updateBusy();
  if (how === "cancelled") setProgress(0, "Cancelled");
  if (how === "error") {
    setProgress(0, "Failed");
    toast(message || "Generation failed", "error");
  }
}

async function finished(id) {
  const job = jobs.get(id);
  if (!job || job.finished) return;
  const history = await getJSON(`/history/${encodeURIComponent(id)}`);
  const entry = history[id];
  const refs = entry ? Object.values(entry.outputs || {}).flatMap((o) => o.images || []).filter((r) => r.type === "output") : [];
  if (entry && entry.status?.status_str === "success" && refs.length) {
    finish(id, "done");
    showImages(refs);
    setProgress(1, `Done · ${refs.length} image${refs.length === 1 ? "" : "s"} · seed ${job.seeds[0]}`);
  } else if (!job.finished) {
    const err = entry?.status?.messages?.find(([e]) => e === "execution_error")?.[1];
    const interrupted = entry?.status?.messages?.some(([e]) => e === "execution_interrupted");
    if (interrupted) finish(id, "cancelled");
    else finish(id, "error", err?.exception_message || "Generation failed");
    if (refs.length) showImages(refs);
  }
  gallery.refresh().catch(() => {});
}

let queueLength = 0;
let galleryTimer = null;
events.addEventListener("status", (e) => {
  const n = e.detail?.status?.exec_info?.queue_remaining ?? 0;
  $("queue").textContent = `queue ${n}`;
  $("queue").classList.toggle("active", n > 0);
  if (n < queueLength) { // a job finished somewhere (maybe in the node editor): its images join the gallery
    clearTimeout(galleryTimer);
    galleryTimer = setTimeout(() => gallery.refresh().catch(() => {}), 300);
  }
  queueLength = n;
});
events.addEventListener("execution_start", (e) => {
  const job = jobs.get(e.detail.prompt_id);
  if (!job) return;
  running = e.detail.prompt_id;
  job.started += 1;
  setProgress(0, job.count > 1 ? `Image ${job.started} of ${job.count} · starting` : "Starting…");
});
events.addEventListener("progress", (e) => {
  const { value, max, prompt_id: id } = e.detail;
  const job = jobs.get(id);
  if (!job) return;
  running = id;
  const index = Math.max(job.started, 1);
  const fraction = (index - 1 + value / max) / job.count;
  const image = job.count > 1 ? `Image ${index} of ${job.count} · ` : "";
  setProgress(fraction, `${image}Step ${value} / ${max}`);
});
events.addEventListener("preview", (e) => {
  const { blob, promptId } = e.detail;
  if (promptId && !jobs.has(promptId)) return;
  showPreview(blob);
});
events.addEventListener("executing", (e) => {
  if (e.detail.node === null && jobs.has(e.detail.prompt_id)) finished(e.detail.prompt_id);
});
events.addEventListener("execution_error", (e) => {
  if (jobs.has(e.detail.prompt_id)) toast(e.detail.exception_message || "Generation failed", "error");
});
events.addEventListener("execution_interrupted", (e) => {
  if (jobs.has(e.detail.prompt_id)) finish(e.detail.prompt_id, "cancelled");
});
events.addEventListener("open", () => {
  $("connection").textContent = "connected";
  $("connection").className = "pill ok";
});
events.addEventListener("close", () => {
  $("connection").textContent = "reconnecting…";
  $("connection").className = "pill warn";
});

// -- images in and out -------------------------------------------------------------------------------------------

async function loadParametersFrom(file) {
  let details;
  try {
    details = await request("/studio/png-info", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  } catch (err) {
    toast(err.message, "error");
    return;
  }
  if (!details.settings) {
    toast(`${file.name} carries no generation parameters.`, "info", { label: "Use it as the source image", run: () => toCanvas(file, "img2img") });
    return;
  }
  form.set(details.settings);
  updateModelInfo();
  const who = details.source ? ` (${details.source})` : "";
  toast(`Loaded the parameters of ${file.name}${who}.`, "ok");
  for (const w of details.warnings || []) toast(w, "info");
}

async function toCanvas(source, mode) {
  try {
    if (source instanceof Blob) await canvas.loadFile(source);
    else await canvas.loadURL(source);
  } catch (err) {
    toast(err.message, "error");
    return;
  }
  form.mode = mode;
  form.save();
  showTab("canvas");
}

canvas.addEventListener("change", (e) => {
  const { what, width, height } = e.detail;
  if (what === "image" || what === "extend" || what === "undo") {
    form.set({ width: Math.max(64, Math.round(width / 8) * 8), height: Math.max(64, Math.round(height / 8) * 8) });
  }
  if (what === "extend") form.set({ mode: "inpaint", masked_content: "fill", denoise: 1 });
  if (what === "mask" && form.mode === "img2img" && canvas.hasMask()) form.set({ mode: "inpaint" });
});

function setupDrops() {
  const overlay = $("drop-overlay");
  let depth = 0;
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    const onCanvas = !$("canvas-view").hidden && e.target.closest?.("#canvas-wrap");
    overlay.textContent = onCanvas ? "Drop to use this picture on the canvas" : "Drop a PNG to load its parameters";
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (!file) return;
    if (!$("canvas-view").hidden && e.target.closest?.("#canvas-wrap")) {
      toCanvas(file, form.mode === "txt2img" ? "img2img" : form.mode);
    } else {
      loadParametersFrom(file);
    }
  });
  $("param-file").addEventListener("change", (e) => {
    const file = e.target.files?.[0];
    if (file) loadParametersFrom(file);
    e.target.value = "";
  });
}

async function openAsWorkflow(workflow, name) {
  localStorage.setItem(OPEN_WORKFLOW_KEY, JSON.stringify({ workflow, name, at: Date.now() }));
  window.open("/graph/", "_blank", "noopener");
}

async function openCurrentAsWorkflow() {
  let values;
  try {
    values = await settings();
  } catch (err) {
    fieldError(err);
    return;
  }
  try {
    const res = await postJSON("/studio/workflow", values);
    await openAsWorkflow(res.workflow, `studio-${res.seed}.json`);
  } catch (err) {
    fieldError(err);
  }
}

// -- gallery actions ---------------------------------------------------------------------------------------------

gallery.addEventListener("use", (e) => {
  form.set(e.detail.details.settings);
  updateModelInfo();
  toast("Settings loaded from the image.", "ok");
});
gallery.addEventListener("img2img", (e) => toCanvas(e.detail.item.url, "img2img"));
gallery.addEventListener("inpaint", (e) => toCanvas(e.detail.item.url, "inpaint"));
gallery.addEventListener("workflow", (e) => openAsWorkflow(e.detail.details.workflow, e.detail.item.filename.replace(/\.\w+$/, ".json")));
gallery.addEventListener("deleted", (e) => toast(`Deleted ${e.detail.item.filename}.`, "ok"));
upscale.addEventListener("upscaled", async (e) => {
  const ref = e.detail;
  toast(`Upscaled to ${ref.width} × ${ref.height}: ${ref.filename}.`, "ok");
  await gallery.refresh().catch(() => {});
  const item = gallery.items.find((i) => i.filename === ref.filename && i.subfolder === ref.subfolder);
  if (item) gallery.open(item);
});
upscale.addEventListener("sd-upscale", async (e) => {
  $("detail").close();
  await queue({ ...e.detail, client_id: events.clientId });
});
upscale.addEventListener("error", (e) => toast(e.detail.message, "error"));

// -- model info --------------------------------------------------------------------------------------------------

async function updateModelInfo() {
  const name = $("model").value;
  const info = form.checkpoint(name);
  const box = $("model-info");
  if (!info) {
    box.textContent = name ? "not installed here" : "";
    return;
  }
  box.textContent = `${info.label}${info.builtin ? " · built-in" : ""} · hash …`;
  try {
    const res = await getJSON(`/studio/model-hash?name=${encodeURIComponent(name)}`);
    if ($("model").value === name) box.textContent = `${info.label}${info.builtin ? " · built-in" : ""} · hash ${res.hash ?? "n/a"}`;
  } catch {
    box.textContent = info.label;
  }
}

// -- start -------------------------------------------------------------------------------------------------------

async function start() {
  $("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  $("cancel").addEventListener("click", () => cancel().catch((err) => toast(err.message, "error")));
  $("tab-output").addEventListener("click", () => showTab("output"));
  $("tab-canvas").addEventListener("click", () => showTab("canvas"));
  $("seed-reuse").addEventListener("click", () => {
    if (lastSeed === null) toast("Nothing generated yet in this session.", "info");
    else form.set({ seed: lastSeed });
  });
  $("open-workflow").addEventListener("click", openCurrentAsWorkflow);
  $("model").addEventListener("change", updateModelInfo);
  const followSize = () => controls.setSize(Number($("width").value), Number($("height").value));
  for (const id of ["width", "height"]) $(id).addEventListener("change", followSize);
  form.onChange = followSize;
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => {
    if (form.mode !== "txt2img") showTab("canvas");
  }));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    }
  });
  setupDrops();
  events.connect();
  try {
    form.setOptions(await getJSON("/studio/options"));
  } catch (err) {
    toast(`Could not read the model list: ${err.message}`, "error");
  }
  const restored = form.restore();
  const model = form.checkpoint($("model").value);
  if (!restored && model?.native_size) form.set({ width: model.native_size, height: model.native_size });
  updateModelInfo();
  followSize();
  controls.load(getJSON).then(() => references.setModels(controls.models))
    .catch((err) => toast(`Could not read the ControlNet models: ${err.message}`, "error"));
  upscale.load().catch((err) => toast(`Could not read the upscalers: ${err.message}`, "error"));
  gallery.refresh().catch((err) => toast(`Could not read the gallery: ${err.message}`, "error"));
  document.body.classList.add("ready");
}

start();
