// A step's log: a bounded tail, live while the step is open, with a level filter, a search
// and "load earlier". Live records come from the store (collected for open logs only).
// While a search is active the lines shown are the ones that contain it (the logs API's `q=`,
// any case), and live lines that contain it join them.

import { api, enc, jobPath } from "../api.js";
import { plural, setText } from "./dom.js";
import { localTime } from "./time.js";

const LEVEL_RANK = { debug: 0, info: 1, warning: 2, error: 3 };
const LOG_TAIL = 500; // log lines kept in the DOM per open step
const LOG_MAX = 5000; // ceiling once the user loaded earlier lines
const LOG_PAGE = 5000; // the logs API's largest page
const BURST = 100; // this many new lines in one frame is a burst: the log is redrawn at most
const BURST_MS = 250; // once per this long while it lasts (nobody reads 500 lines a frame)

export class LogView {
  constructor(app, stepView, tools, list) {
    this.app = app;
    this.sv = stepView;
    this.key = stepView.key;
    this.list = list;
    this.levelSelect = tools.querySelector(".level");
    this.earlierButton = tools.querySelector(".earlier");
    this.note = tools.querySelector(".log-note");
    this.level = "info"; // debug lines are there on demand
    this.searchForm = tools.querySelector(".log-search");
    this.searchInput = tools.querySelector(".log-q");
    this.clearButton = tools.querySelector(".log-search-clear");
    this.q = ""; // the active search ("": the live tail)
    const name = stepView.name;
    this.searchForm.setAttribute("aria-label", `search the log of step ${name}`);
    this.searchInput.setAttribute("aria-label", `Search the log of step ${name}`);
    this.searchInput.placeholder = "text in a line";
    tools.querySelector(".log-find").setAttribute("aria-label", `Find in the log of step ${name}`);
    this.clearButton.setAttribute("aria-label", `Clear the search of step ${name}`);
    this.searchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search(this.searchInput.value);
    });
    this.searchInput.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && (this.q || this.searchInput.value)) {
        event.preventDefault();
        this.clearSearch();
      }
    });
    this.clearButton.addEventListener("click", () => this.clearSearch());
    this.searchInput.addEventListener("search", () => {
      if (!this.searchInput.value) this.search(""); // the box's own clear (×)
    });
    this.total = 0;
    this.active = false;
    this.reset();
    this.levelSelect.addEventListener("change", () => {
      this.level = this.levelSelect.value;
      if (this.active) this.load();
    });
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
    list.addEventListener("click", (event) => {
      const who = event.target.closest("button[data-log-child]");
      if (who) this.sv.children.showChild(who.dataset.logChild);
    });
  }

  reset() {
    this.token = (this.token || 0) + 1; // answers to older requests are dropped
    this.lines = []; // records, ascending seq
    this.fresh = []; // records not in the DOM yet
    this.buffered = null; // live records that arrived while the tail was loading
    this.cap = LOG_TAIL;
    this.hasEarlier = false;
    this.failure = "";
    this.loading = false;
    this.rebuild = true;
    this.drawnAt = 0; // the last render, for bursts
    this.later = 0;
    this.app.redraw(this);
  }

  /** Show only the lines that contain `text` (any case); empty: back to the live tail. */
  search(text) {
    const q = text.trim();
    if (q === this.q && !this.failure) return;
    this.q = q;
    this.clearButton.hidden = !q;
    if (this.active) this.load();
  }

  clearSearch() {
    this.searchInput.value = "";
    this.search("");
    this.searchInput.focus();
  }

  setTotal(total) {
    if (this.total === total) return;
    this.total = total;
    if (this.active) this.app.redraw(this); // its "showing n of m" note
  }

  activate() {
    if (this.active) return;
    this.active = true;
    this.app.store.watchLog(this.key);
    this.app.logViews.set(this.key, this);
    this.load();
  }

  deactivate() {
    if (this.active && this.app.logViews.get(this.key) === this) {
      this.app.store.unwatchLog(this.key);
      this.app.logViews.delete(this.key);
    }
    this.active = false;
    this.reset(); // a closed step keeps no lines: the DOM stays small whatever the job size
  }

  /** Take the live records the store collected for this log. */
  takeRecords() {
    const { records, overflow } = this.app.store.takeLogRecords(this.key);
    if (overflow) {
      this.load(); // lines were lost in between (or the stream started over): re-read the tail
      return;
    }
    for (const record of records) this.push(record);
  }

  push(record) {
    if (!this.active || LEVEL_RANK[record.level] < LEVEL_RANK[this.level]) return;
    if (this.q && !lineMatches(this.q, record.message)) return;
    if (this.buffered) {
      this.buffered.push(record);
      return;
    }
    const last = this.lines[this.lines.length - 1];
    if (last && record.seq <= last.seq) return;
    this.lines.push(record);
    this.fresh.push(record);
    if (this.lines.length > 2 * this.cap) this.trim();
  }

  trim() {
    const excess = this.lines.length - this.cap;
    if (excess <= 0) return 0;
    this.lines.splice(0, excess);
    this.hasEarlier = true;
    if (this.fresh.length > this.lines.length) this.fresh = this.fresh.slice(-this.lines.length);
    return excess;
  }

  async load() {
    this.reset();
    const token = this.token;
    this.buffered = [];
    this.loading = true;
    try {
      const { records, more } = await this.read(null, this.cap);
      if (token !== this.token) return;
      const last = records.length ? records[records.length - 1].seq : 0;
      this.lines = records.concat(this.buffered.filter((r) => r.seq > last));
      this.hasEarlier = more;
    } catch (error) {
      if (token !== this.token) return;
      this.failure = `could not load the log: ${error.message}`;
    }
    this.buffered = null;
    this.loading = false;
    this.rebuild = true;
    this.app.redraw(this);
  }

  async loadEarlier() {
    if (!this.lines.length || this.loading) return;
    const token = this.token;
    this.loading = true;
    this.earlierButton.disabled = true;
    try {
      const { records, more } = await this.read(this.lines[0].seq, LOG_TAIL);
      if (token !== this.token) return;
      this.cap = Math.min(LOG_MAX, this.cap + records.length);
      this.lines = records.concat(this.lines).slice(-this.cap);
      this.hasEarlier = more || this.lines.length === LOG_MAX;
      this.rebuild = true;
    } catch (error) {
      if (token === this.token) this.failure = `could not load earlier lines: ${error.message}`;
    } finally {
      if (token === this.token) this.loading = false;
      this.earlierButton.disabled = false;
      this.app.redraw(this);
    }
  }

  /** The last `keep` lines (before seq `before`, if given) at this log's level and above: one
   *  backwards page of the logs API (`before=`), ascending; `more` if earlier lines exist. */
  async read(before, keep) {
    const cursor = before == null ? Number.MAX_SAFE_INTEGER : before;
    const page = await api(
      `${jobPath(this.sv.jobView.id)}/logs?step=${enc(this.sv.name)}&level=${enc(this.level)}` +
        `&before=${cursor}&limit=${Math.min(keep, LOG_PAGE)}` + (this.q ? `&q=${enc(this.q)}` : ""),
    );
    return { records: page.logs, more: page.next != null };
  }

  render() {
    if (!this.rebuild && this.fresh.length >= BURST) {
      const wait = this.drawnAt + BURST_MS - performance.now();
      if (wait > 0) {
        if (!this.later) this.later = setTimeout(() => {
          this.later = 0;
          this.app.redraw(this);
        }, wait);
        return;
      }
    }
    this.drawnAt = performance.now();
    const list = this.list;
    const changed = this.rebuild || this.fresh.length > 0;
    // Follow the tail only if the reader is already at the bottom (reads layout: only on change).
    const stick = changed && list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    const dropped = this.trim();
    if (this.rebuild || this.fresh.length >= this.lines.length) {
      const fragment = document.createDocumentFragment();
      for (const record of this.lines) fragment.append(logLineElement(record, this.sv.name));
      list.replaceChildren(fragment);
    } else {
      const inDom = this.lines.length - this.fresh.length + dropped;
      for (let n = Math.min(dropped, inDom); n > 0; n--) list.firstElementChild.remove();
      if (this.fresh.length) {
        const fragment = document.createDocumentFragment();
        for (const record of this.fresh) fragment.append(logLineElement(record, this.sv.name));
        list.append(fragment);
      }
    }
    this.rebuild = false;
    this.fresh = [];
    if (stick && list.childElementCount) list.scrollTop = list.scrollHeight;
    this.earlierButton.hidden = !this.active || !this.hasEarlier;
    let note = "";
    if (this.failure) note = this.failure;
    else if (this.loading && this.buffered) note = this.q ? "searching…" : "loading…";
    else if (this.active && this.q) {
      const n = this.lines.length;
      const filter = this.level === "debug" ? "" : ` at ${this.level} and above`;
      const found = `“${this.q}”${filter}`;
      if (!n) note = `no line matches ${found}`;
      else if (this.hasEarlier) note = `the last ${plural(n, "line")} that match ${found}`;
      else note = `${plural(n, "line")} ${n === 1 ? "matches" : "match"} ${found}`;
    } else if (this.active) {
      const filter = this.level === "debug" ? "" : `, ${this.level} and above`;
      note = `showing ${this.lines.length} of ${plural(this.total, "line")}${filter}`;
    }
    setText(this.note, note);
  }
}

/** The logs API's rule (`q=`): the line contains the text, whatever the case. */
function lineMatches(text, message) {
  return message.toLowerCase().includes(text.toLowerCase());
}

function logLineElement(record, stepName) {
  const li = document.createElement("li");
  li.dataset.seq = String(record.seq);
  li.dataset.level = record.level;
  // Text only, never HTML: log lines come from job code and may contain anything.
  const head = `${localTime(record.ts)} ${record.level.padEnd(7)} `;
  if (record.job_id && record.job_id !== record.step_id && record.job_id !== record.manager_id) {
    // Written by a child: which one, a click from its row in the step's children.
    const who = document.createElement("button");
    who.type = "button";
    who.className = "log-child";
    who.dataset.logChild = record.job_id;
    who.textContent = record.job_id;
    who.setAttribute("aria-label", `Show child ${record.job_id} of step ${stepName}`);
    li.append(head, who, ` ${record.message}`);
  } else {
    li.textContent = `${head}${record.message}`;
  }
  return li;
}
