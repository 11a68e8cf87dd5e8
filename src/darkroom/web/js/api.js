// Talking to the darkroom server: JSON requests and the ComfyUI websocket (events and step previews).

/** An error answer from the server, with the field it names when there is one. */
export class ServerError extends Error {
  constructor(message, field = null, status = 0) {
    super(message);
    this.field = field;
    this.status = status;
  }
}

function messageOf(body, fallback) {
  if (!body || typeof body !== "object") return fallback;
  if (typeof body.error === "string" && body.error !== "RequestValidationError") return body.error;
  if (body.error && typeof body.error === "object") return body.error.message || fallback;
  return body.detail || body.errors?.[0]?.message || fallback;
}

/** fetch + JSON, throwing ServerError with the server's message on a non-2xx answer. */
export async function request(url, options = {}) {
  const res = await fetch(url, { cache: "no-store", ...options });
  const type = res.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    let field = body?.field || body?.errors?.[0]?.field || null;
    throw new ServerError(messageOf(body, `${res.status} ${res.statusText}`), field, res.status);
  }
  return body;
}

export const getJSON = (url) => request(url);

export function postJSON(url, data) {
  return request(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data ?? {}),
  });
}

function newClientId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID().replaceAll("-", "");
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

/**
 * The `/ws` connection. Dispatches each JSON message as an event named by its type (detail = data),
 * "preview" for binary step previews (detail = {blob, promptId}), and "open"/"close".
 */
export class ServerEvents extends EventTarget {
  constructor() {
    super();
    // one id per page: reconnects keep it, a second tab (even a duplicated one) gets its own
    this.clientId = newClientId();
    this.socket = null;
    this.connected = false;
    this.retry = 500;
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws?clientId=${encodeURIComponent(this.clientId)}`);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.addEventListener("open", () => {
      this.connected = true;
      this.retry = 500;
      ws.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true } }));
      this.dispatchEvent(new CustomEvent("open"));
    });
    ws.addEventListener("message", (event) => this.#onMessage(event.data));
    ws.addEventListener("close", () => {
      const was = this.connected;
      this.connected = false;
      this.socket = null;
      if (was) this.dispatchEvent(new CustomEvent("close"));
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 5000);
    });
  }

  #onMessage(data) {
    if (typeof data === "string") {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (msg && typeof msg.type === "string") this.dispatchEvent(new CustomEvent(msg.type, { detail: msg.data }));
      return;
    }
    const view = new DataView(data);
    if (data.byteLength < 8) return;
    const kind = view.getUint32(0);
    if (kind === 1) {
      const format = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
      this.#preview(new Blob([data.slice(8)], { type: format }), null);
    } else if (kind === 4) {
      const length = view.getUint32(4);
      let meta = {};
      try {
        meta = JSON.parse(new TextDecoder().decode(data.slice(8, 8 + length)));
      } catch {
        meta = {};
      }
      const blob = new Blob([data.slice(8 + length)], { type: meta.image_type || "image/jpeg" });
      this.#preview(blob, meta.prompt_id || null);
    }
  }

  #preview(blob, promptId) {
    this.dispatchEvent(new CustomEvent("preview", { detail: { blob, promptId } }));
  }
}

/** `/view` URL of an output image reference {filename, subfolder, type}. */
export function viewURL(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "output" });
  return `/view?${q}`;
}
