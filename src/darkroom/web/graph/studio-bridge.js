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
    document.title = `${data.name || "studio"} - darkroom`;
    window.__darkroomLoaded = (window.__darkroomLoaded || 0) + 1;
  } catch (err) {
    console.error("darkroom: could not load the studio workflow", err);
  }
}

const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)));

app.registerExtension({
  name: "darkroom.studioBridge",
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
