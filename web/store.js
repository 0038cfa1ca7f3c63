// The page's one store: manager jobs by id, each holding its steps in a map keyed by step name.
//
// Reducers apply stream events and API answers that are newer than what the store holds (every
// entry remembers the seq it reflects) and only mark what changed dirty. The store never calls
// a view: one listener (the render scheduler) hears that something is dirty.

export const COUNT_KEYS = ["total", "pending", "running", "completed", "failed", "cancelled"];
export const TERMINAL = new Set(["completed", "failed", "cancelled", "skipped"]);
export const STREAM_TYPES = ["snapshot", "job_status", "step_progress", "job_progress", "log", "job_deleted", "end"];

const MAX_JOBS = 100; // finished, unpinned jobs beyond this leave the page, oldest first
const LOG_BUFFER = 5000; // log records held for one open step between two renders
const MAX_FORGOTTEN = 1000; // deleted ids remembered, so a late answer cannot bring one back
const JOB_FIELDS = ["definition", "status", "params", "created_at", "started_at", "finished_at", "error",
                    "traceback", "progress", "log_count", "current_step", "rerun_of", "settled"];
const STEP_FIELDS = ["status", "progress", "log_count", "started_at", "finished_at", "error", "traceback"];
const CHILD_FIELDS = ["kind", "name", "status", "manager_id", "step_id", "step_name", "parent_id", "depth",
                      "attempt", "retries", "created_at", "started_at", "finished_at", "error", "traceback", "attempts"];

export function zeroProgress() {
  return { total: 0, pending: 0, running: 0, completed: 0, failed: 0, cancelled: 0 };
}

/** The key of one step of one manager job (for its log and its children). */
export const stepKey = (managerId, stepName) => JSON.stringify([managerId, stepName]);

/** Whether a job may still change: until the server says it is settled (its `end`). */
export function isActive(job) {
  return !job.settled;
}

export function newestFirst(a, b) {
  if (a.created_at !== b.created_at) return a.created_at < b.created_at ? 1 : -1;
  return b.arrival - a.arrival;
}

function copy(target, source, keys) {
  for (const key of keys) if (key in source) target[key] = source[key];
}

export class Store {
  constructor() {
    this.seq = 0; // highest seq applied from the all-jobs stream (shown as data-seq)
    this.lastEventId = "";
    this.epoch = 0; // bumped by each `snapshot`: answers to requests made before it are dropped
    this.arrival = 0;
    this.jobs = new Map();
    this.clockOffset = 0; // server clock minus browser clock, in ms
    this.fetching = new Set(); // manager ids with a snapshot request in flight
    this.missing = new Set(); // managers that events named but the store does not hold yet
    this.pinned = new Set(); // kept whatever their age: the URL's job, search results, open jobs
    this.forgotten = new Set(); // deleted manager ids
    this.logs = new Map(); // step key -> {records, overflow} for each open log
    this.children = new Map(); // step key -> {rows: Map(id -> child), tail, status} for each open children view
    this.dirty = { jobs: new Set(), order: false, connection: false, logs: new Set(), children: new Set() };
    this.listener = () => {};
  }

  /** Server time now, in ms since the epoch, whatever the browser's clock says. */
  now() {
    return Date.now() + this.clockOffset;
  }

  /** The server said it was `iso` when the browser's clock read `browserMs`. */
  syncClock(iso, browserMs = Date.now()) {
    const server = Date.parse(iso);
    if (Number.isNaN(server)) return;
    this.clockOffset = server - browserMs;
    this.markAllJobs();
  }

  // -------------------------------------------------------------- dirty marks

  changed() {
    this.listener();
  }

  markJob(job) {
    this.dirty.jobs.add(job.id);
    this.changed();
  }

  markAllJobs() {
    for (const id of this.jobs.keys()) this.dirty.jobs.add(id);
    this.changed();
  }

  markOrder() {
    this.dirty.order = true;
    this.changed();
  }

  // -------------------------------------------------------------- jobs and steps

  newJob(id) {
    const job = {
      id, seq: -1, arrival: ++this.arrival, definition: "", status: "pending", params: undefined,
      created_at: "", started_at: null, finished_at: null, error: null, traceback: null, rerun_of: null,
      progress: zeroProgress(), log_count: 0, settled: false, steps: new Map(),
    };
    this.jobs.set(id, job);
    this.markOrder();
    return job;
  }

  /** Apply a step's fields if `seq` is newer than what the step entry reflects. */
  applyStep(job, name, index, seq, fields) {
    let step = job.steps.get(name);
    if (!step) {
      step = { name, index, seq: -1, id: "", status: "pending", progress: zeroProgress(), log_count: 0,
               started_at: null, finished_at: null, error: null, traceback: null };
      job.steps.set(name, step);
      job.steps = new Map([...job.steps.entries()].sort((a, b) => a[1].index - b[1].index));
    }
    if (seq <= step.seq) return false;
    if (fields.id) step.id = fields.id;
    copy(step, fields, STEP_FIELDS);
    step.seq = seq;
    this.markJob(job);
    return true;
  }

  /** Apply a manager's JSON (stream, `GET api/jobs/{id}`, a listing) as of `seq`. */
  applyManager(m, seq) {
    if (this.forgotten.has(m.id)) return null;
    let job = this.jobs.get(m.id);
    if (!job) job = this.newJob(m.id);
    if (seq > job.seq) {
      job.seq = seq;
      copy(job, m, JOB_FIELDS);
    } else if (m.params !== undefined && job.params === undefined) {
      job.params = m.params; // listings carry no params: take them from any full answer
    }
    for (const s of m.steps || []) this.applyStep(job, s.name, s.index, seq, s);
    this.missing.delete(m.id);
    this.markJob(job);
    this.prune();
    return job;
  }

  /** Remove a manager job (deleted on the server); nothing may bring it back. */
  removeJob(id) {
    this.forgotten.add(id);
    if (this.forgotten.size > MAX_FORGOTTEN) this.forgotten.delete(this.forgotten.values().next().value);
    this.pinned.delete(id);
    this.missing.delete(id);
    if (this.jobs.delete(id)) this.markOrder();
  }

  /** The manager an event is about; an unknown one is marked missing (to be fetched). */
  managerFor(id) {
    const job = this.jobs.get(id);
    if (!job && !this.forgotten.has(id)) {
      this.missing.add(id);
      this.changed();
    }
    return job;
  }

  prune() {
    if (this.jobs.size <= MAX_JOBS) return;
    const oldest = [...this.jobs.values()].sort(newestFirst).reverse();
    for (const job of oldest) {
      if (this.jobs.size <= MAX_JOBS) break;
      if (!isActive(job) && !this.pinned.has(job.id)) this.jobs.delete(job.id);
    }
    this.markOrder();
  }

  // -------------------------------------------------------------- the stream

  /** Apply one event of the all-jobs stream; `at` is when the browser received it. */
  applyEvent(type, d, lastEventId, at) {
    if (lastEventId) this.lastEventId = lastEventId;
    const reducer = this.reducers[type];
    if (reducer) reducer.call(this, d, at);
    if (type !== "snapshot" && d.seq > this.seq) this.seq = d.seq;
    this.dirty.connection = true;
    this.changed();
  }

  reducers = {
    snapshot(d, at) {
      // Wholesale: a restarted server starts over with a lower seq, and that is the truth now.
      // Pinned jobs it does not carry (old ones) stay, to be re-read.
      this.epoch += 1;
      this.seq = d.seq;
      if (d.time) this.syncClock(d.time, at);
      const kept = [...this.jobs.values()].filter((job) => this.pinned.has(job.id));
      this.jobs = new Map();
      this.fetching.clear();
      this.missing.clear();
      for (let i = d.jobs.length - 1; i >= 0; i--) this.applyManager(d.jobs[i], d.seq); // oldest first
      for (const job of kept) {
        if (this.jobs.has(job.id)) continue;
        job.seq = -1;
        for (const step of job.steps.values()) step.seq = -1;
        this.jobs.set(job.id, job);
        this.missing.add(job.id);
      }
      for (const entry of this.logs.values()) entry.overflow = true; // reload open logs
      for (const key of this.logs.keys()) this.dirty.logs.add(key);
      this.markAllJobs();
      this.markOrder();
    },
    job_status(d) {
      if (d.kind === "manager") {
        this.applyManager(d.job, d.seq);
      } else if (d.kind === "step") {
        const job = this.managerFor(d.manager_id);
        if (job) this.applyStep(job, d.step_name, d.index, d.seq, { ...d, id: d.step_id });
      } else if (d.kind === "child") {
        this.applyChild(d);
      }
    },
    step_progress(d) {
      const job = this.managerFor(d.manager_id);
      if (job) this.applyStep(job, d.step_name, d.index, d.seq, { ...d, id: d.step_id });
    },
    job_progress(d) {
      const job = this.managerFor(d.manager_id);
      if (!job || d.seq <= job.seq) return;
      job.seq = d.seq;
      copy(job, d, ["status", "progress", "log_count"]);
      this.markJob(job);
    },
    log(d) {
      const job = this.managerFor(d.manager_id);
      if (!job) return;
      if (d.seq > job.seq) {
        job.seq = d.seq;
        job.log_count = d.manager_log_count;
        this.markJob(job);
      }
      if (d.step_name == null) return;
      const step = job.steps.get(d.step_name);
      this.applyStep(job, d.step_name, step ? step.index : 0, d.seq, { log_count: d.log_count });
      this.addLogRecord(d);
    },
    job_deleted(d) {
      this.removeJob(d.manager_id);
    },
    end(d) {
      const job = this.jobs.get(d.manager_id);
      if (!job || d.seq <= job.seq) return;
      job.seq = d.seq;
      job.status = d.status;
      job.settled = true;
      if (d.finished_at) job.finished_at = d.finished_at; // a cancelled job ends with its last step
      this.markJob(job);
    },
  };

  // -------------------------------------------------------------- open logs

  /** Start collecting live log records of one step (its log is open). */
  watchLog(key) {
    this.logs.set(key, { records: [], overflow: false });
  }

  unwatchLog(key) {
    this.logs.delete(key);
  }

  addLogRecord(record) {
    const key = stepKey(record.manager_id, record.step_name);
    const entry = this.logs.get(key);
    if (!entry) return;
    entry.records.push(record);
    if (entry.records.length > LOG_BUFFER) {
      entry.records.splice(0, entry.records.length - LOG_BUFFER);
      entry.overflow = true; // lines were dropped while no frame rendered: the view re-reads
    }
    this.dirty.logs.add(key);
  }

  /** The records collected for an open log since the last call, and whether some were lost. */
  takeLogRecords(key) {
    const entry = this.logs.get(key);
    if (!entry) return { records: [], overflow: false };
    const taken = { records: entry.records, overflow: entry.overflow };
    entry.records = [];
    entry.overflow = false;
    return taken;
  }

  // -------------------------------------------------------------- open children views

  watchChildren(key) {
    if (!this.children.has(key)) {
      // `changed`: ids of shown rows whose fields changed (updated in place); `reshape`: rows were
      // added or replaced (the view rebuilds its order).
      this.children.set(key, { rows: new Map(), tail: false, status: "", loading: false, early: [], reload: false,
                               changed: new Set(), reshape: true });
    }
    return this.children.get(key);
  }

  unwatchChildren(key) {
    this.children.delete(key);
  }

  /** A page request is under way: child events that arrive meanwhile wait for its answer. */
  beginChildrenPage(key) {
    const entry = this.children.get(key);
    if (!entry) return;
    entry.loading = true;
    entry.early = [];
  }

  /** A page of children from the API: it replaces the rows shown. `tail`: it is the last page,
   *  so children created later belong on it (if they match `status`). */
  setChildrenPage(key, children, tail, status) {
    const entry = this.children.get(key);
    if (!entry) return;
    const same = children.length === entry.rows.size && children.every((child) => entry.rows.has(child.id));
    if (same) {
      // The same children (a re-read): their rows change in place, the page keeps its layout.
      for (const child of children) {
        Object.assign(entry.rows.get(child.id), child, { seq: -1 });
        entry.changed.add(child.id);
      }
    } else {
      entry.rows = new Map(children.map((child) => [child.id, { ...child, seq: -1 }]));
      entry.reshape = true;
      entry.changed.clear();
    }
    entry.tail = tail;
    entry.status = status;
    entry.loading = false;
    const early = entry.early;
    entry.early = [];
    for (const d of early) this.applyChild(d);
    this.dirty.children.add(key);
    this.changed();
  }

  /** The child stream of a manager (re)started: open views of it re-read their page. */
  childStreamStarted(managerId) {
    for (const [key, entry] of this.children) {
      if (JSON.parse(key)[0] !== managerId) continue;
      entry.reload = true;
      this.dirty.children.add(key);
    }
    this.changed();
  }

  /** A child's `job_status` event: update its row where a children view shows it. */
  applyChild(d) {
    const key = stepKey(d.manager_id, d.step_name);
    const entry = this.children.get(key);
    if (!entry) return;
    if (entry.loading) {
      if (entry.early.length < LOG_BUFFER) entry.early.push(d);
      else entry.reload = true;
      return;
    }
    const id = d.id || d.job_id;
    let row = entry.rows.get(id);
    if (row) {
      // Page rows carry no seq; a terminal one is final, so no event can be newer.
      if (d.seq <= row.seq || (row.seq < 0 && TERMINAL.has(row.status))) return;
    } else {
      if (!entry.tail || (entry.status && entry.status !== d.status)) return;
      row = { id };
      entry.rows.set(id, row);
      entry.reshape = true;
    }
    entry.changed.add(id);
    copy(row, d, CHILD_FIELDS);
    row.seq = d.seq;
    this.dirty.children.add(key);
    this.changed();
  }
}
