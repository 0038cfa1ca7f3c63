// stepstream's page: one store fed by one EventSource, rendered at most once per animation frame.
//
// Data flows one way: stream event / API snapshot -> store (seq-guarded) -> dirty marks -> render.
// Every URL is relative to the page, so the app works mounted under any prefix.
"use strict";

const COUNT_KEYS = ["total", "pending", "running", "completed", "failed", "cancelled"];
const BAR_SEGMENTS = ["completed", "failed", "cancelled", "running"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "skipped"]);
const LEVEL_RANK = { debug: 0, info: 1, warning: 2, error: 3 };
const STREAM_TYPES = ["snapshot", "job_status", "step_progress", "job_progress", "log"];

const LOG_TAIL = 500; // log lines kept in the DOM per open step
const LOG_MAX = 5000; // ceiling once the user loaded earlier lines
const LOG_PAGE = 5000; // the logs API's largest page
const CHILDREN_PAGE = 50;
const MAX_JOBS = 100; // finished jobs beyond this are dropped from the page, oldest first
const RECONCILE_MS = 10000;
const STALE_AFTER_MS = 10000; // reconnecting for longer than this is shown as stale
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];

// ------------------------------------------------------------------ helpers

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** JSON from a path relative to the page; throws ApiError with the server's message. */
async function api(path, options) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || `HTTP ${response.status}`);
  }
  return body;
}

const enc = encodeURIComponent;
const jobPath = (id) => `api/jobs/${enc(id)}`;

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** HH:MM:SS in local time (by hand: toLocaleTimeString costs ~50x more, per log line). */
function clock(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${clock(d)}.${pad(d.getMilliseconds(), 3)}`;
}

function zeroProgress() {
  return { total: 0, pending: 0, running: 0, completed: 0, failed: 0, cancelled: 0 };
}

// ------------------------------------------------------------------ the store

/** The one store: manager jobs by id, each holding its steps in a map keyed by step name.
 *  Every entry remembers the seq it reflects; anything not newer is ignored. */
const store = {
  seq: 0, // highest seq applied from the stream (shown as data-seq)
  lastEventId: "",
  epoch: 0, // bumped by each `snapshot`: answers to requests made before it are dropped
  arrival: 0,
  jobs: new Map(),
};

const dirty = { jobs: new Set(), logs: new Set(), order: false, connection: true };
const fetching = new Set(); // manager ids with a snapshot request in flight

function newJob(id) {
  return {
    id, seq: -1, arrival: ++store.arrival, definition: "", status: "pending", params: {},
    created_at: "", started_at: null, finished_at: null, error: null,
    progress: zeroProgress(), log_count: 0, steps: new Map(),
  };
}

function markJob(job) {
  dirty.jobs.add(job.id);
  schedule();
}

function isActive(job) {
  if (!TERMINAL.has(job.status)) return true;
  for (const step of job.steps.values()) if (!TERMINAL.has(step.status) && step.status !== "pending") return true;
  return false;
}

/** Apply a step's fields if `seq` is newer than what the step entry reflects. */
function applyStep(job, name, index, seq, fields) {
  let step = job.steps.get(name);
  if (!step) {
    step = { name, index, seq: -1, id: "", status: "pending", progress: zeroProgress(), log_count: 0,
             started_at: null, finished_at: null, error: null };
    job.steps.set(name, step);
    job.steps = new Map([...job.steps.entries()].sort((a, b) => a[1].index - b[1].index));
  }
  if (seq <= step.seq) return false;
  Object.assign(step, fields);
  step.seq = seq;
  markJob(job);
  return true;
}

/** Apply a full manager JSON (stream snapshot, job_status or `GET api/jobs/{id}`) as of `seq`. */
function applyManager(m, seq) {
  let job = store.jobs.get(m.id);
  if (!job) {
    job = newJob(m.id);
    store.jobs.set(m.id, job);
    dirty.order = true;
  }
  if (seq > job.seq) {
    job.seq = seq;
    for (const key of ["definition", "status", "params", "created_at", "started_at", "finished_at",
                       "error", "progress", "log_count"]) job[key] = m[key];
  }
  for (const s of m.steps) {
    applyStep(job, s.name, s.index, seq, {
      id: s.id, status: s.status, progress: s.progress, log_count: s.log_count,
      started_at: s.started_at, finished_at: s.finished_at, error: s.error,
    });
  }
  markJob(job);
  return job;
}

/** The manager an event is about; unknown ones are fetched (they appear once answered). */
function managerFor(id) {
  const job = store.jobs.get(id);
  if (!job) fetchJob(id);
  return job;
}

const onStream = {
  snapshot(d) {
    // Wholesale: a restarted server starts over with a lower seq, and that is the truth now.
    store.epoch += 1;
    store.seq = d.seq;
    store.jobs = new Map();
    fetching.clear();
    for (let i = d.jobs.length - 1; i >= 0; i--) applyManager(d.jobs[i], d.seq); // oldest first
    dirty.order = true;
    for (const view of views.values()) view.streamRestarted();
  },
  job_status(d) {
    if (d.kind === "manager") {
      applyManager(d.job, d.seq);
      return;
    }
    if (d.kind !== "step") return;
    const job = managerFor(d.manager_id);
    if (!job) return;
    applyStep(job, d.step_name, d.index, d.seq, {
      id: d.step_id, status: d.status, started_at: d.started_at, finished_at: d.finished_at, error: d.error,
    });
  },
  step_progress(d) {
    const job = managerFor(d.manager_id);
    if (!job) return;
    applyStep(job, d.step_name, d.index, d.seq,
              { id: d.step_id, status: d.status, progress: d.progress, log_count: d.log_count });
  },
  job_progress(d) {
    const job = managerFor(d.manager_id);
    if (!job || d.seq <= job.seq) return;
    Object.assign(job, { seq: d.seq, status: d.status, progress: d.progress, log_count: d.log_count });
    markJob(job);
  },
  log(d) {
    const job = managerFor(d.manager_id);
    if (!job) return;
    if (d.seq > job.seq) {
      job.seq = d.seq;
      job.log_count = d.manager_log_count;
      markJob(job);
    }
    if (d.step_name == null) return;
    const step = job.steps.get(d.step_name);
    applyStep(job, d.step_name, step ? step.index : 0, d.seq, { log_count: d.log_count });
    const view = views.get(job.id);
    if (view) view.logLine(d);
  },
};

function pruneJobs() {
  if (store.jobs.size <= MAX_JOBS) return;
  const oldest = [...store.jobs.values()].sort(newestFirst).reverse();
  for (const job of oldest) {
    if (store.jobs.size <= MAX_JOBS) break;
    if (!isActive(job)) store.jobs.delete(job.id);
  }
  dirty.order = true;
}

function newestFirst(a, b) {
  if (a.created_at !== b.created_at) return a.created_at < b.created_at ? 1 : -1;
  return b.arrival - a.arrival;
}

// ------------------------------------------------------------------ reconciliation

/** Fetch one manager's snapshot and apply it where it is newer than what the page holds. */
async function fetchJob(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  const epoch = store.epoch;
  try {
    const snap = await api(jobPath(id));
    if (epoch === store.epoch && snap.job.kind === "manager") applyManager(snap.job, snap.seq);
  } catch (error) {
    if (!(error instanceof ApiError)) console.warn("stepstream: could not fetch job", id, error);
  } finally {
    if (epoch === store.epoch) fetching.delete(id);
  }
}

/** Re-read every job that may still change: periodically, after a reconnect, when visible again. */
function reconcile() {
  for (const job of store.jobs.values()) if (isActive(job)) fetchJob(job.id);
}

// ------------------------------------------------------------------ the connection

const conn = {
  es: null,
  state: "reconnecting",
  lostAt: new Date(),
  hadError: false,
  attempt: 0,
  retryTimer: 0,
  staleTimer: 0,
};

function setConnection(state) {
  if (state === "live") {
    clearTimeout(conn.staleTimer);
    conn.staleTimer = 0;
  } else if (conn.state === "live") {
    conn.lostAt = new Date();
  }
  if (state === "reconnecting" && !conn.staleTimer) {
    conn.staleTimer = setTimeout(() => setConnection("stale"), STALE_AFTER_MS);
  }
  conn.state = state;
  dirty.connection = true;
  schedule();
}

/** Open the page's one EventSource; after our own retry it resumes with `?last_event_id=`. */
function connect() {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = 0;
  if (conn.es) conn.es.close();
  const url = store.lastEventId ? `api/events?last_event_id=${enc(store.lastEventId)}` : "api/events";
  const es = new EventSource(url);
  conn.es = es;
  es.onopen = () => {
    if (es !== conn.es) return;
    conn.attempt = 0;
    setConnection("live");
    if (conn.hadError) {
      conn.hadError = false;
      reconcile();
    }
  };
  es.onerror = () => {
    if (es !== conn.es) return;
    conn.hadError = true;
    if (conn.state === "live") setConnection("reconnecting");
    // CONNECTING: the browser retries by itself (sending Last-Event-ID). CLOSED: it gave up
    // (a non-200 answer, e.g. a proxy during a restart), so we retry with backoff.
    if (es.readyState === EventSource.CLOSED) scheduleReconnect();
  };
  for (const type of STREAM_TYPES) {
    es.addEventListener(type, (event) => {
      if (es === conn.es) enqueue(type, event.data, event.lastEventId);
    });
  }
}

// The browser may hand over thousands of events in one task when the stream catches up; they
// are applied in order, in slices of a few milliseconds, so the page stays responsive.
const inbox = [];
const SLICE_MS = 8;
const tick = new MessageChannel();
let draining = false;

function enqueue(type, data, lastEventId) {
  inbox.push({ type, data, lastEventId });
  if (!draining) {
    draining = true;
    tick.port2.postMessage(null);
  }
}

function drain() {
  const until = performance.now() + SLICE_MS;
  let n = 0;
  while (n < inbox.length) {
    applyEvent(inbox[n++]);
    if (n % 32 === 0 && performance.now() > until) break;
  }
  inbox.splice(0, n);
  if (inbox.length) tick.port2.postMessage(null);
  else draining = false;
  dirty.connection = true;
  schedule();
}
tick.port1.onmessage = drain;

function applyEvent({ type, data, lastEventId }) {
  let d;
  try {
    d = JSON.parse(data);
  } catch (_) {
    return;
  }
  if (lastEventId) store.lastEventId = lastEventId;
  onStream[type](d);
  if (type !== "snapshot" && d.seq > store.seq) store.seq = d.seq;
}

function scheduleReconnect() {
  conn.es.close();
  if (conn.retryTimer) return;
  const base = BACKOFF_MS[Math.min(conn.attempt, BACKOFF_MS.length - 1)];
  conn.attempt += 1;
  conn.retryTimer = setTimeout(connect, base / 2 + Math.random() * base / 2); // jitter spreads a crowd
}

// ------------------------------------------------------------------ views

const views = new Map(); // manager id -> JobView
let autoExpand = true; // until the user opens or closes a job, keep the newest running one open
let autoExpanded = null;

function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

function buildBar(bar, label) {
  setAttr(bar, "aria-label", label);
  for (const key of BAR_SEGMENTS) {
    const seg = document.createElement("span");
    seg.className = `seg seg-${key}`;
    bar.append(seg);
  }
}

function updateBar(bar, p) {
  const done = p.completed + p.failed + p.cancelled;
  setAttr(bar, "aria-valuemax", String(p.total));
  setAttr(bar, "aria-valuenow", String(done));
  setAttr(bar, "aria-valuetext", p.total ? `${done} of ${p.total} finished` : "no child jobs");
  BAR_SEGMENTS.forEach((key, i) => {
    const width = p.total ? `${(100 * p[key]) / p.total}%` : "0%";
    const seg = bar.children[i];
    if (seg.style.width !== width) seg.style.width = width;
  });
}

function buildCounts(el) {
  for (const key of COUNT_KEYS) {
    const span = document.createElement("span");
    span.className = `count count-${key}`;
    const n = document.createElement("b");
    span.append(n, ` ${key}`);
    el.append(span);
  }
}

function updateCounts(el, p) {
  COUNT_KEYS.forEach((key, i) => {
    const span = el.children[i];
    setText(span.firstChild, String(p[key]));
    span.classList.toggle("zero", p[key] === 0);
  });
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

class JobView {
  constructor(job) {
    this.id = job.id;
    this.el = fromTemplate("job-template");
    this.el.dataset.job = job.id;
    const $ = (sel) => this.el.querySelector(sel);
    this.toggle = $(".toggle");
    this.definition = $(".definition");
    this.status = $(".status");
    this.bar = $(".bar");
    this.counts = $(".counts");
    this.logCount = $(".log-count");
    this.cancelButton = $(".cancel");
    this.error = $(".error");
    this.stepList = $(".steps");
    setText($(".job-id"), job.id);
    this.stepList.id = `steps-${job.id}`;
    this.toggle.setAttribute("aria-controls", this.stepList.id);
    buildBar(this.bar, `progress of job ${job.id}`);
    buildCounts(this.counts);
    this.steps = new Map(); // step name -> StepView
    this.expanded = false;
    this.follow = true; // open the running step's logs until the user picks steps themselves
    this.toggle.addEventListener("click", () => {
      autoExpand = false;
      this.setExpanded(!this.expanded);
    });
    this.cancelButton.addEventListener("click", () => this.cancel());
  }

  setExpanded(expanded) {
    this.expanded = expanded;
    this.toggle.setAttribute("aria-expanded", String(expanded));
    this.stepList.hidden = !expanded;
    if (!expanded) for (const sv of this.steps.values()) sv.setOpen(false);
    const job = store.jobs.get(this.id);
    if (job) markJob(job);
  }

  update(job) {
    setAttr(this.el, "data-status", job.status);
    setText(this.definition, job.definition);
    setText(this.status, job.status);
    this.toggle.title = `created ${localTime(job.created_at)}`;
    updateBar(this.bar, job.progress);
    updateCounts(this.counts, job.progress);
    setText(this.logCount, plural(job.log_count, "log line"));
    this.cancelButton.hidden = TERMINAL.has(job.status);
    this.error.hidden = !job.error;
    setText(this.error, job.error || "");
    let position = 0;
    for (const step of job.steps.values()) {
      let sv = this.steps.get(step.name);
      if (!sv) {
        sv = new StepView(this, step.name);
        this.steps.set(step.name, sv);
      }
      if (this.stepList.children[position] !== sv.el) this.stepList.insertBefore(sv.el, this.stepList.children[position] || null);
      position += 1;
      sv.update(step);
    }
    if (this.expanded && this.follow) {
      const running = [...job.steps.values()].find((s) => s.status === "running");
      if (running) for (const sv of this.steps.values()) sv.setOpen(sv.name === running.name);
    }
  }

  logLine(record) {
    const sv = this.steps.get(record.step_name);
    if (sv) sv.log.push(record);
  }

  streamRestarted() {
    for (const sv of this.steps.values()) sv.log.reloadIfActive();
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      const snap = await api(`${jobPath(this.id)}/cancel`, { method: "POST" });
      applyManager(snap.job, snap.seq);
    } catch (error) {
      if (error.status === 409) fetchJob(this.id); // already finished: show how
      else showMessage(`Could not cancel ${this.id}: ${error.message}`);
    } finally {
      this.cancelButton.disabled = false;
    }
  }

  remove() {
    for (const sv of this.steps.values()) sv.log.deactivate();
    this.el.remove();
  }
}

class StepView {
  constructor(jobView, name) {
    this.jobView = jobView;
    this.name = name;
    this.el = fromTemplate("step-template");
    this.el.dataset.step = name;
    const $ = (sel) => this.el.querySelector(sel);
    this.details = $("details");
    this.status = $(".status");
    this.bar = $(".bar");
    this.counts = $(".counts");
    this.logCount = $(".log-count");
    this.error = $(".error");
    setText($(".step-name"), name);
    buildBar(this.bar, `progress of step ${name}`);
    buildCounts(this.counts);
    this.wantOpen = false;
    this.log = new LogView(this, $(".log-tools"), $(".log"));
    this.children = new ChildrenView(this, $(".children"));
    this.details.addEventListener("toggle", () => {
      if (this.details.open !== this.wantOpen) {
        this.wantOpen = this.details.open; // the user's choice: stop following the running step
        this.jobView.follow = false;
      }
      if (this.details.open) this.log.activate();
      else this.log.deactivate();
    });
  }

  setOpen(open) {
    this.wantOpen = open;
    if (this.details.open !== open) this.details.open = open;
  }

  update(step) {
    const el = this.el;
    setAttr(el, "data-status", step.status);
    for (const key of COUNT_KEYS) setAttr(el, `data-${key}`, String(step.progress[key]));
    setAttr(el, "data-log-count", String(step.log_count));
    setText(this.status, step.status);
    updateBar(this.bar, step.progress); // the step's own counts, never the manager's
    updateCounts(this.counts, step.progress);
    setText(this.logCount, plural(step.log_count, "log line"));
    this.error.hidden = !step.error;
    setText(this.error, step.error || "");
    if (this.log.total !== step.log_count) {
      this.log.total = step.log_count;
      if (this.log.active) this.log.mark(); // its "showing n of m" note
    }
  }
}

/** A step's log: a bounded tail, live while open, with a level filter and "load earlier". */
class LogView {
  constructor(stepView, tools, list) {
    this.sv = stepView;
    this.list = list;
    this.levelSelect = tools.querySelector(".level");
    this.earlierButton = tools.querySelector(".earlier");
    this.note = tools.querySelector(".log-note");
    this.level = "debug";
    this.total = 0;
    this.active = false;
    this.reset();
    this.levelSelect.addEventListener("change", () => {
      this.level = this.levelSelect.value;
      this.reloadIfActive();
    });
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
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
    this.mark();
  }

  mark() {
    dirty.logs.add(this);
    schedule();
  }

  activate() {
    if (this.active) return;
    this.active = true;
    this.load();
  }

  deactivate() {
    this.active = false;
    this.reset(); // a closed step keeps no lines: the DOM stays small whatever the job size
  }

  reloadIfActive() {
    if (this.active) this.load();
  }

  push(record) {
    if (!this.active || LEVEL_RANK[record.level] < LEVEL_RANK[this.level]) return;
    if (this.buffered) {
      this.buffered.push(record);
      return;
    }
    const last = this.lines[this.lines.length - 1];
    if (last && record.seq <= last.seq) return;
    this.lines.push(record);
    this.fresh.push(record);
    if (this.lines.length > 2 * this.cap) this.trim(); // also bounded while no frame renders
    this.mark();
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
      const { records, more } = await readLogs(this.sv, this.level, null, this.cap);
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
    this.mark();
  }

  async loadEarlier() {
    if (!this.lines.length || this.loading) return;
    const token = this.token;
    this.loading = true;
    this.earlierButton.disabled = true;
    try {
      const { records, more } = await readLogs(this.sv, this.level, this.lines[0].seq, LOG_TAIL);
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
      this.mark();
    }
  }

  render() {
    const list = this.list;
    const changed = this.rebuild || this.fresh.length > 0;
    // Follow the tail only if the reader is already at the bottom (reads layout: only on change).
    const stick = changed && list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    const dropped = this.trim();
    if (this.rebuild || this.fresh.length >= this.lines.length) {
      const fragment = document.createDocumentFragment();
      for (const record of this.lines) fragment.append(logLineElement(record));
      list.replaceChildren(fragment);
    } else {
      const inDom = this.lines.length - this.fresh.length + dropped;
      for (let n = Math.min(dropped, inDom); n > 0; n--) list.firstElementChild.remove();
      if (this.fresh.length) {
        const fragment = document.createDocumentFragment();
        for (const record of this.fresh) fragment.append(logLineElement(record));
        list.append(fragment);
      }
    }
    this.rebuild = false;
    this.fresh = [];
    if (stick && list.childElementCount) list.scrollTop = list.scrollHeight;
    this.earlierButton.hidden = !this.active || !this.hasEarlier;
    let note = "";
    if (this.failure) note = this.failure;
    else if (this.loading && this.buffered) note = "loading…";
    else if (this.active) {
      const filter = this.level === "debug" ? "" : `, ${this.level} and above`;
      note = `showing ${this.lines.length} of ${plural(this.total, "line")}${filter}`;
    }
    setText(this.note, note);
  }
}

function logLineElement(record) {
  const li = document.createElement("li");
  li.dataset.seq = String(record.seq);
  li.dataset.level = record.level;
  // Text only, never HTML: log lines come from job code and may contain anything.
  li.textContent = `${localTime(record.ts)} ${record.level.padEnd(7)} ${record.message}`;
  return li;
}

/** The last `keep` log lines of a step (before seq `before`, if given), at `level` and above:
 *  one backwards page of the logs API (`before=`), ascending; `more` if earlier lines exist. */
async function readLogs(stepView, level, before, keep) {
  const cursor = before == null ? Number.MAX_SAFE_INTEGER : before;
  const page = await api(
    `${jobPath(stepView.jobView.id)}/logs?step=${enc(stepView.name)}&level=${enc(level)}` +
      `&before=${cursor}&limit=${Math.min(keep, LOG_PAGE)}`,
  );
  return { records: page.logs, more: page.next != null };
}

/** A paginated list of a step's children, fetched on demand: never one DOM row per child. */
class ChildrenView {
  constructor(stepView, root) {
    this.sv = stepView;
    this.toggle = root.querySelector(".children-toggle");
    this.panel = root.querySelector(".children-panel");
    this.statusSelect = root.querySelector(".children-status");
    this.tbody = root.querySelector("tbody");
    this.next = root.querySelector(".children-next");
    this.note = root.querySelector(".children-note");
    this.cursor = 0;
    this.nextCursor = null;
    this.token = 0;
    this.toggle.addEventListener("click", () => {
      const open = this.panel.hidden;
      this.panel.hidden = !open;
      this.toggle.setAttribute("aria-expanded", String(open));
      setText(this.toggle, open ? "Hide children" : "Show children");
      if (open) this.load(0);
      else this.tbody.replaceChildren();
    });
    root.querySelector(".children-first").addEventListener("click", () => this.load(0));
    this.next.addEventListener("click", () => this.nextCursor != null && this.load(this.nextCursor));
    this.statusSelect.addEventListener("change", () => this.load(0));
  }

  async load(cursor) {
    const token = ++this.token;
    const status = this.statusSelect.value;
    const query = `step=${enc(this.sv.name)}&limit=${CHILDREN_PAGE}&cursor=${cursor}${status ? `&status=${enc(status)}` : ""}`;
    setText(this.note, "loading…");
    try {
      const page = await api(`${jobPath(this.sv.jobView.id)}/children?${query}`);
      if (token !== this.token) return;
      const rows = document.createDocumentFragment();
      page.children.forEach((child) => {
        const tr = document.createElement("tr");
        tr.dataset.status = child.status;
        for (const text of [child.id, child.name, child.status, String(child.attempt), child.error || ""]) {
          const td = document.createElement("td");
          td.textContent = text;
          tr.append(td);
        }
        rows.append(tr);
      });
      this.tbody.replaceChildren(rows);
      this.cursor = cursor;
      this.nextCursor = page.next;
      this.next.disabled = page.next == null;
      setText(this.note, page.children.length ? "" : "no children");
    } catch (error) {
      if (token === this.token) setText(this.note, `could not load children: ${error.message}`);
    }
  }
}

// ------------------------------------------------------------------ rendering

let frame = 0;

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  if (dirty.connection) renderConnection();
  if (dirty.order) renderOrder();
  for (const id of dirty.jobs) {
    const job = store.jobs.get(id);
    const view = views.get(id);
    if (job && view) view.update(job);
  }
  dirty.jobs.clear();
  for (const log of dirty.logs) log.render();
  dirty.logs.clear();
}

function renderConnection() {
  dirty.connection = false;
  const el = document.getElementById("connection");
  setAttr(el, "data-connection", conn.state);
  setAttr(el, "data-seq", String(store.seq));
  const text = { live: "live", reconnecting: "reconnecting…", stale: `stale since ${clock(conn.lostAt)}` }[conn.state];
  setText(el.querySelector(".connection-text"), text);
  setText(el.querySelector(".connection-seq"), `seq ${store.seq}`);
}

function renderOrder() {
  dirty.order = false;
  pruneJobs();
  dirty.order = false;
  const jobs = [...store.jobs.values()].sort(newestFirst);
  for (const [id, view] of views) {
    if (!store.jobs.has(id)) {
      view.remove();
      views.delete(id);
    }
  }
  const container = document.getElementById("jobs");
  jobs.forEach((job, position) => {
    let view = views.get(job.id);
    if (!view) {
      view = new JobView(job);
      views.set(job.id, view);
      dirty.jobs.add(job.id);
    }
    if (container.children[position] !== view.el) container.insertBefore(view.el, container.children[position] || null);
  });
  document.getElementById("jobs-empty").hidden = jobs.length > 0;
  if (autoExpand && jobs.length) {
    const target = jobs.find((job) => !TERMINAL.has(job.status)) || jobs[0];
    if (autoExpanded !== target.id) {
      const previous = views.get(autoExpanded);
      if (previous) previous.setExpanded(false);
      views.get(target.id).setExpanded(true);
      autoExpanded = target.id;
    }
  }
}

// ------------------------------------------------------------------ the start form

function showMessage(text) {
  const message = document.querySelector(".form-message");
  message.hidden = !text;
  message.textContent = text;
}

async function loadDefinitions() {
  const select = document.querySelector("#start-form select[name=definition]");
  try {
    const { definitions } = await api("api/definitions");
    select.replaceChildren(...definitions.map((d) => {
      const option = document.createElement("option");
      option.value = d.name;
      option.textContent = `${d.name} (${d.steps.join(" → ")})`;
      return option;
    }));
  } catch (error) {
    showMessage(`Could not load the job definitions: ${error.message}`);
  }
}

async function startJob(event) {
  event.preventDefault();
  const form = event.currentTarget;
  let params;
  try {
    params = JSON.parse(form.params.value || "{}");
  } catch (error) {
    showMessage(`Params are not valid JSON: ${error.message}`);
    return;
  }
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    showMessage("Params must be a JSON object, like {\"size\": 40}.");
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const snap = await api("api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ definition: form.definition.value, params }),
    });
    showMessage("");
    applyManager(snap.job, snap.seq);
    render(); // create its view now, so it can be expanded
    autoExpand = false;
    views.get(snap.job.id).setExpanded(true);
  } catch (error) {
    showMessage(`Could not start the job: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ start

function main() {
  document.getElementById("start-form").addEventListener("submit", startJob);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    if (!conn.es || conn.es.readyState === EventSource.CLOSED) connect(); // skip the backoff wait
    reconcile();
  });
  setInterval(() => {
    if (document.visibilityState === "visible") reconcile();
  }, RECONCILE_MS);
  setConnection("reconnecting");
  loadDefinitions();
  connect();
}

main();
