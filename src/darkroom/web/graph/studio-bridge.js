// darkroom: the node editor's side of the studio's "Open as workflow".
// The studio page leaves {workflow (API format), name} under localStorage[KEY] and opens /graph/. This extension
// loads it once the editor has restored its previous graph; an editor already open in another tab loads it at once.
import { app } from "../../scripts/app.js";

const KEY = "darkroom.openWorkflow";
let waiting = null; // a workflow found at start-up, loaded after the first graph is configured
let started = false;

function take() {
  const raw = localStorage.getItem(KEY);
  if (!raw) return null;
  localStorage.removeItem(KEY);
  try {
    const data = JSON.parse(raw);
    return data && typeof data.workflow === "object" ? data : null;
  } catch {
    return null;
  }
}

async function load(data) {
  try {
    await app.loadApiJson(data.workflow, data.name || "studio.json");
    // the studio chose these seeds: keep them for the first run instead of randomizing after it
    for (const node of app.graph.nodes) {
      const control = node.widgets?.find((w) => w.name === "control_after_generate");
      if (control) control.value = "fixed";
    }
    app.graph.setDirtyCanvas(true, true);
    document.title = `${data.name || "studio"} - darkroom`;
    window.__darkroomLoaded = (window.__darkroomLoaded || 0) + 1;
  } catch (err) {
    console.error("darkroom: could not load the studio workflow", err);
  }
}

// Loader nodes the editor's model library maps model folders to. Frontend 1.27 fails to build any model loader
// node (Load Checkpoint included) when one of these classes is unknown, so darkroom declares the ones it does not
// offer as hidden placeholders: they never appear in search, and the server refuses them by name if queued.
const MODEL_LOADERS = ["CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "LoraLoader", "LoraLoaderModelOnly",
  "VAELoader", "ControlNetLoader", "UNETLoader", "UpscaleModelLoader", "StyleModelLoader", "GLIGENLoader"];

function placeholder(name) {
  return {
    name, display_name: `${name} (not available in darkroom)`, category: "unavailable", python_module: "darkroom",
    description: "darkroom does not offer this node yet; it is listed only so the editor's model library works.",
    input: { required: {} }, input_order: { required: [] }, output: [], output_is_list: [], output_name: [],
    output_node: false, deprecated: true,
  };
}

const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)));

app.registerExtension({
  name: "darkroom.studioBridge",
  async addCustomNodeDefs(defs) {
    for (const name of MODEL_LOADERS) if (!(name in defs)) defs[name] = placeholder(name);
  },
  async setup() {
    waiting = take();
    started = true;
  },
  async afterConfigureGraph() {
    if (!waiting) return;
    const data = waiting;
    waiting = null;
    // let the editor finish registering the graph it is loading, then replace it
    nextFrame().then(() => load(data));
  },
});

window.addEventListener("storage", (event) => {
  if (event.key !== KEY || !event.newValue || !started) return;
  const data = take();
  if (data) load(data);
});
