// The pose editor: a stick figure of the 18 OpenPose body keypoints (COCO-18 order) whose joints are dragged with
// the pointer. Its pose is OpenPose JSON; the server draws it as the control image (/controlnet/render_openpose_json).

const SVG = "http://www.w3.org/2000/svg";

/** COCO-18 keypoint names, in OpenPose's order. */
export const KEYPOINTS = ["nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder",
  "left elbow", "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
  "right eye", "left eye", "right ear", "left ear"];

/** The 17 limbs (0-based keypoint pairs) and the colours OpenPose draws keypoints and limbs with. */
const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
  [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
const COLORS = ["#ff0000", "#ff5500", "#ffaa00", "#ffff00", "#aaff00", "#55ff00", "#00ff00", "#00ff55", "#00ffaa",
  "#00ffff", "#00aaff", "#0055ff", "#0000ff", "#5500ff", "#aa00ff", "#ff00ff", "#ff00aa", "#ff0055"];

/**
 * A person standing, facing the viewer, on a canvas of height 1 (x is measured in heights from the centre line,
 * so the figure keeps its proportions on any canvas shape). The person's right side is on the picture's left.
 */
const STANDING = [[0, 0.14], [0, 0.25], [-0.09, 0.25], [-0.12, 0.4], [-0.14, 0.53], [0.09, 0.25], [0.12, 0.4],
  [0.14, 0.53], [-0.06, 0.54], [-0.065, 0.72], [-0.07, 0.9], [0.06, 0.54], [0.065, 0.72], [0.07, 0.9],
  [-0.025, 0.12], [0.025, 0.12], [-0.05, 0.13], [0.05, 0.13]];

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

const clamp01 = (v) => Math.max(0, Math.min(1, v));

/** The default standing pose on a width × height canvas, as normalised [x, y] points (0..1). */
export function standingPose(width, height) {
  const aspect = height / width;
  return STANDING.map(([dx, y]) => [clamp01(0.5 + dx * aspect), y]);
}

export class PoseEditor extends EventTarget {
  /** `width` × `height`: the generation size the pose is drawn for (its canvas in the OpenPose JSON). */
  constructor(width = 512, height = 512) {
    super();
    this.width = width;
    this.height = height;
    this.points = standingPose(width, height); // normalised [x, y]
    this.dragging = null;
    this.element = svg("svg", { class: "pose-svg", role: "img", "aria-label": "Pose: drag the joints" });
    this.limbs = LIMBS.map(([a], i) => svg("line", { class: "limb", stroke: COLORS[i], "data-from": a }));
    this.joints = this.points.map((_, i) => {
      const c = svg("circle", { class: "joint", fill: COLORS[i], "data-joint": i, tabindex: -1 });
      const title = svg("title");
      title.textContent = KEYPOINTS[i];
      c.append(title);
      return c;
    });
    this.element.append(...this.limbs, ...this.joints);
    this.element.addEventListener("pointerdown", (e) => this.#down(e));
    this.element.addEventListener("pointermove", (e) => this.#move(e));
    this.element.addEventListener("pointerup", () => this.#up());
    this.element.addEventListener("pointercancel", () => this.#up());
    this.#layout();
  }

  /** Follow the generation size (the figure keeps its place in relative terms). */
  setSize(width, height) {
    if (width === this.width && height === this.height) return;
    this.width = width;
    this.height = height;
    this.#layout();
  }

  /** Back to the standing figure. */
  reset() {
    this.points = standingPose(this.width, this.height);
    this.#draw();
    this.#changed();
  }

  /** OpenPose JSON of the figure, in pixels of the generation size. */
  pose() {
    const flat = this.points.flatMap(([x, y]) => [Math.round(x * this.width * 10) / 10,
      Math.round(y * this.height * 10) / 10, 1]);
    return { people: [{ pose_keypoints_2d: flat }], canvas_width: this.width, canvas_height: this.height };
  }

  #layout() {
    this.element.setAttribute("viewBox", `0 0 ${this.width} ${this.height}`);
    this.element.style.aspectRatio = `${this.width} / ${this.height}`;
    const size = Math.max(this.width, this.height);
    this.radius = Math.max(2.5, size / 64);
    for (const line of this.limbs) line.setAttribute("stroke-width", String(Math.max(1.5, size / 110)));
    this.#draw();
  }

  #draw() {
    const px = ([x, y]) => [x * this.width, y * this.height];
    LIMBS.forEach(([a, b], i) => {
      const [x1, y1] = px(this.points[a]);
      const [x2, y2] = px(this.points[b]);
      Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => this.limbs[i].setAttribute(k, v.toFixed(2)));
    });
    this.joints.forEach((c, i) => {
      const [x, y] = px(this.points[i]);
      c.setAttribute("cx", x.toFixed(2));
      c.setAttribute("cy", y.toFixed(2));
      c.setAttribute("r", String(this.radius));
    });
  }

  #where(e) {
    const r = this.element.getBoundingClientRect();
    return [clamp01((e.clientX - r.left) / r.width), clamp01((e.clientY - r.top) / r.height)];
  }

  #down(e) {
    const joint = e.target.closest?.(".joint");
    if (!joint || e.button > 0) return;
    e.preventDefault();
    this.element.setPointerCapture(e.pointerId);
    this.dragging = Number(joint.dataset.joint);
    joint.classList.add("dragging");
  }

  #move(e) {
    if (this.dragging === null) return;
    this.points[this.dragging] = this.#where(e);
    this.#draw();
  }

  #up() {
    if (this.dragging === null) return;
    this.joints[this.dragging].classList.remove("dragging");
    this.dragging = null;
    this.#changed();
  }

  #changed() {
    this.dispatchEvent(new CustomEvent("change", { detail: { pose: this.pose() } }));
  }
}
