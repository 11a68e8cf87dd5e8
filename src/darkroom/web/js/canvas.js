// The img2img / inpaint / outpaint canvas: a picture, a mask painted over it, undo, and canvas extension.

const $ = (id) => document.getElementById(id);
const MASK_COLOR = "#ff2d6f";
const UNDO_LIMIT = 30;

export function makeCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("that file is not an image the browser can read"));
    img.src = src;
  });
}

/**
 * Freehand strokes on a canvas with the pointer (the mask brush here, the control panel's scribble pad).
 * `style()` gives {color, width, erase} for each stroke; `onStart()` may refuse (false) or snapshot for undo;
 * `onEnd()` runs when a stroke is finished.
 */
export class StrokePad {
  constructor(canvas, { style, onStart = () => true, onEnd = () => {} }) {
    this.canvas = canvas;
    this.style = style;
    this.onStart = onStart;
    this.onEnd = onEnd;
    this.drawing = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    canvas.addEventListener("pointerup", () => this.#up());
    canvas.addEventListener("pointercancel", () => this.#up());
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  /** Pointer position in canvas pixels (the canvas may be shown larger or smaller than it is). */
  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * this.canvas.width) / r.width, ((e.clientY - r.top) * this.canvas.height) / r.height];
  }

  stroke(from, to) {
    const { color, width, erase } = this.style();
    const ctx = this.canvas.getContext("2d");
    ctx.save();
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0] + 0.01, to[1]);
    ctx.stroke();
    ctx.restore();
  }

  #down(e) {
    if (e.button > 0 || this.onStart() === false) return;
    this.canvas.setPointerCapture(e.pointerId);
    this.drawing = true;
    this.last = this.point(e);
    this.stroke(this.last, this.last);
  }

  #move(e) {
    if (!this.drawing) return;
    const p = this.point(e);
    this.stroke(this.last, p);
    this.last = p;
  }

  #up() {
    if (!this.drawing) return;
    this.drawing = false;
    this.onEnd();
  }
}

export class CanvasEditor extends EventTarget {
  constructor() {
    super();
    this.base = $("base-canvas"); // the picture
    this.mask = $("mask-canvas"); // painted strokes (MASK_COLOR, alpha = coverage)
    this.wrap = $("canvas-wrap");
    this.tool = "brush";
    this.undoStack = [];
    this.hasImage = false;
    this.#bind();
  }

  #bind() {
    $("tool-brush").addEventListener("click", () => this.setTool("brush"));
    $("tool-eraser").addEventListener("click", () => this.setTool("eraser"));
    $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
    $("undo").addEventListener("click", () => this.undo());
    $("clear-mask").addEventListener("click", () => this.clearMask());
    for (const side of ["left", "top", "right", "bottom"]) {
      $(`extend-${side}`).addEventListener("click", () => this.extend(side, Number($("extend-by").value)));
    }
    $("load-image").addEventListener("change", (e) => {
      const file = e.target.files?.[0];
      if (file) this.loadFile(file);
      e.target.value = "";
    });
    this.pad = new StrokePad(this.mask, {
      style: () => ({ color: MASK_COLOR, width: Number($("brush-size").value), erase: this.tool === "eraser" }),
      onStart: () => {
        if (!this.hasImage) return false;
        this.#snapshot();
        return true;
      },
      onEnd: () => this.#changed("mask"),
    });
    new ResizeObserver(() => this.fit()).observe(this.wrap);
  }

  /** Show the picture as large as the canvas area allows (small pictures are enlarged, up to 8×). */
  fit() {
    if (!this.hasImage) return;
    const box = this.wrap.getBoundingClientRect();
    if (!box.width) return; // the canvas tab is hidden
    const scale = Math.min((box.width - 24) / this.width, Math.max(200, box.height - 24) / this.height, 8);
    const w = `${Math.max(1, Math.floor(this.width * scale))}px`;
    const h = `${Math.max(1, Math.floor(this.height * scale))}px`;
    for (const c of [this.base, this.mask]) {
      c.style.width = w;
      c.style.height = h;
    }
  }

  setTool(tool) {
    this.tool = tool;
    $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
    $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
  }

  get width() { return this.base.width; }
  get height() { return this.base.height; }

  // -- pictures ---------------------------------------------------------------------------------------------
  async loadFile(file) {
    const url = URL.createObjectURL(file);
    try {
      await this.loadURL(url);
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  /** Load a picture (its size is kept; the mask starts empty). */
  async loadURL(url) {
    const img = await loadImage(url);
    this.#snapshot();
    this.base.width = this.mask.width = img.naturalWidth;
    this.base.height = this.mask.height = img.naturalHeight;
    this.base.getContext("2d").drawImage(img, 0, 0);
    this.hasImage = true;
    this.wrap.classList.add("has-image");
    this.#changed("image");
  }

  /** Grow the canvas on one side by `by` pixels: the new strip repeats the edge and is masked for outpainting. */
  extend(side, by) {
    if (!this.hasImage || !(by > 0)) return;
    this.#snapshot();
    const horizontal = side === "left" || side === "right";
    const w = this.width + (horizontal ? by : 0);
    const h = this.height + (horizontal ? 0 : by);
    const dx = side === "left" ? by : 0;
    const dy = side === "top" ? by : 0;
    const oldBase = this.base.getContext("2d").getImageData(0, 0, this.width, this.height);
    const oldMask = this.mask.getContext("2d").getImageData(0, 0, this.width, this.height);
    const [ow, oh] = [this.width, this.height];
    const src = makeCanvas(ow, oh);
    src.getContext("2d").putImageData(oldBase, 0, 0);
    this.base.width = this.mask.width = w;
    this.base.height = this.mask.height = h;
    const ctx = this.base.getContext("2d");
    // stretch the outermost row/column of pixels over the new strip: a neutral start for the fill
    if (side === "left") ctx.drawImage(src, 0, 0, 1, oh, 0, 0, by, oh);
    if (side === "right") ctx.drawImage(src, ow - 1, 0, 1, oh, ow, 0, by, oh);
    if (side === "top") ctx.drawImage(src, 0, 0, ow, 1, 0, 0, ow, by);
    if (side === "bottom") ctx.drawImage(src, 0, oh - 1, ow, 1, 0, oh, ow, by);
    ctx.putImageData(oldBase, dx, dy);
    const mctx = this.mask.getContext("2d");
    mctx.putImageData(oldMask, dx, dy);
    mctx.fillStyle = MASK_COLOR;
    const overlap = Math.min(16, Math.floor((horizontal ? ow : oh) / 4)); // repaint a little of the old edge too
    if (side === "left") mctx.fillRect(0, 0, by + overlap, h);
    if (side === "right") mctx.fillRect(ow - overlap, 0, by + overlap, h);
    if (side === "top") mctx.fillRect(0, 0, w, by + overlap);
    if (side === "bottom") mctx.fillRect(0, oh - overlap, w, by + overlap);
    this.#changed("extend");
  }

  // -- mask -------------------------------------------------------------------------------------------------
  clearMask() {
    if (!this.hasImage) return;
    this.#snapshot();
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
    this.#changed("mask");
  }

  /** Whether any mask pixel is painted. */
  hasMask() {
    if (!this.hasImage) return false;
    const data = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
  }

  // -- undo -------------------------------------------------------------------------------------------------
  #snapshot() {
    if (!this.hasImage) return;
    const w = this.width, h = this.height;
    this.undoStack.push({
      base: this.base.getContext("2d").getImageData(0, 0, w, h),
      mask: this.mask.getContext("2d").getImageData(0, 0, w, h),
    });
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
    $("undo").disabled = false;
  }

  undo() {
    const state = this.undoStack.pop();
    $("undo").disabled = !this.undoStack.length;
    if (!state) return;
    this.base.width = this.mask.width = state.base.width;
    this.base.height = this.mask.height = state.base.height;
    this.base.getContext("2d").putImageData(state.base, 0, 0);
    this.mask.getContext("2d").putImageData(state.mask, 0, 0);
    this.#changed("undo");
  }

  #changed(what) {
    this.fit();
    $("canvas-size").textContent = this.hasImage ? `${this.width} × ${this.height}` : "";
    this.dispatchEvent(new CustomEvent("change", { detail: { what, width: this.width, height: this.height } }));
  }

  // -- export -----------------------------------------------------------------------------------------------
  /** The picture as a PNG data URL. */
  imageDataURL() {
    return this.base.toDataURL("image/png");
  }

  /** The mask as a black-and-white PNG data URL (white = repaint). */
  maskDataURL() {
    const w = this.width, h = this.height;
    const white = makeCanvas(w, h);
    const wctx = white.getContext("2d");
    wctx.drawImage(this.mask, 0, 0);
    wctx.globalCompositeOperation = "source-in";
    wctx.fillStyle = "#fff";
    wctx.fillRect(0, 0, w, h);
    const out = makeCanvas(w, h);
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    ctx.drawImage(white, 0, 0);
    return out.toDataURL("image/png");
  }
}
