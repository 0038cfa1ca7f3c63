// Whether the server can reach its storage: the page says so, apart from its own connection.
// While storage (SQLite, Redis) is unreachable the stream stays open but carries nothing new, and
// commands are refused; the banner says why, from `api/health`, until it answers 200 again.
// The same answer says how many workers there are and how many are busy (`workers`): `onWorkers`
// hands it on (null when unknown), for the steps whose children wait for one.

import { setAttr } from "./dom.js";

const EVERY_MS = 5000;
const DEGRADED_EVERY_MS = 2000;

export class StorageWatch {
  constructor(el, onWorkers = () => {}) {
    this.el = el;
    this.onWorkers = onWorkers;
    this.text = el.querySelector(".storage-text");
    this.timer = 0;
  }

  start() {
    this.check();
  }

  async check() {
    clearTimeout(this.timer);
    let degraded = null;
    try {
      const response = await fetch("api/health", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      const body = await response.json().catch(() => ({}));
      if (response.status === 503) degraded = body.storage_error || body.journal_error || "storage does not answer";
      this.onWorkers(body.workers || null);
    } catch (_) {
      degraded = null; // the server itself is unreachable: the connection indicator says so
    }
    this.show(degraded);
    this.timer = setTimeout(() => this.check(), degraded ? DEGRADED_EVERY_MS : EVERY_MS);
  }

  show(error) {
    setAttr(this.el, "data-storage", error ? "degraded" : "ok");
    this.el.hidden = !error;
    if (error) {
      this.text.textContent = `Storage is unreachable (${error}). New jobs and commands wait until it is back; ` +
        "what you see may be behind, and will catch up by itself.";
    }
  }
}
