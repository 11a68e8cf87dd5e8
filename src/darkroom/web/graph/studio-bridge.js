// darkroom: the node editor's side of the studio's "Open as workflow".
// The studio page leaves {workflow (API format), name, at} under localStorage[KEY] and opens /graph/ in a new tab;
// the editor starting there takes it (an hour-old one is ignored) and loads it once its previous graph is restored.
// Editors already open elsewhere leave it alone, so the workflow always appears in the tab the studio opened.
import { app } from "../../scripts/app.js";

const KEY = "darkroom.openWorkflow";
const MAX_AGE_MS = 60 * 60 * 1000;
let waiting = null; // a workflow found at start-up, loaded after the first graph is configured

function take() {
  const raw = localStorage.getItem(KEY);
  if (!raw) return null;
  localStorage.removeItem(KEY);
  try {
    const data = JSON.parse(raw);
    if (!data || typeof data.workflow !== "object" || !(Date.now() - (data.at || 0) < MAX_AGE_MS)) return null;
    return data;
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
    // an editor that restores nothing (workflow persistence off) never configures a graph: load it anyway
    if (waiting) setTimeout(() => { if (waiting) { const data = waiting; waiting = null; load(data); } }, 5000);
  },
  async afterConfigureGraph() {
    if (!waiting) return;
    const data = waiting;
    waiting = null;
    // let the editor finish registering the graph it is loading, then replace it
    nextFrame().then(() => load(data));
  },
});
