// The event streams: the page's all-jobs EventSource (live / reconnecting / stale, backoff
// reconnects that resume with `?last_event_id=`), and per-job child streams for open children
// views. Events are handed over in slices of a few milliseconds, so a stream catching up with
// thousands of events in one task keeps the page responsive.

import { enc } from "./api.js";
import { STREAM_TYPES } from "./store.js";

const STALE_AFTER_MS = 10000; // reconnecting for longer than this is shown as stale
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const SLICE_MS = 8;

/** Calls `deliver(type, data, lastEventId, receivedAt)` for each queued event, in order and in
 *  slices, then `done()` after each slice. */
class Inbox {
  constructor(deliver, done) {
    this.deliver = deliver;
    this.done = done;
    this.queue = [];
    this.draining = false;
    this.tick = new MessageChannel();
    this.tick.port1.onmessage = () => this.drain();
  }

  push(type, raw, lastEventId) {
    this.queue.push({ type, raw, lastEventId, at: Date.now() });
    if (!this.draining) {
      this.draining = true;
      this.tick.port2.postMessage(null);
    }
  }

  drain() {
    const until = performance.now() + SLICE_MS;
    let n = 0;
    while (n < this.queue.length) {
      const { type, raw, lastEventId, at } = this.queue[n++];
      let data;
      try {
        data = JSON.parse(raw);
      } catch (_) {
        continue;
      }
      this.deliver(type, data, lastEventId, at);
      if (n % 32 === 0 && performance.now() > until) break;
    }
    this.queue.splice(0, n);
    if (this.queue.length) this.tick.port2.postMessage(null);
    else this.draining = false;
    this.done();
  }
}

/** The all-jobs stream. `onEvent(type, data, lastEventId, receivedAt)`; `onState(state)`;
 *  `onReconnected()` after a connection that followed an error (time to reconcile). */
export class Connection {
  constructor({ onEvent, onBatch, onState, onReconnected, lastEventId }) {
    this.onState = onState;
    this.onReconnected = onReconnected;
    this.lastEventId = lastEventId; // () -> the id to resume after
    this.inbox = new Inbox(onEvent, onBatch);
    this.es = null;
    this.state = "reconnecting";
    this.lostAt = new Date();
    this.hadError = false;
    this.attempt = 0;
    this.retryTimer = 0;
    this.staleTimer = 0;
  }

  setState(state) {
    if (state === "live") {
      clearTimeout(this.staleTimer);
      this.staleTimer = 0;
    } else if (this.state === "live") {
      this.lostAt = new Date();
    }
    if (state === "reconnecting" && !this.staleTimer) {
      this.staleTimer = setTimeout(() => this.setState("stale"), STALE_AFTER_MS);
    }
    this.state = state;
    this.onState(state);
  }

  /** Whether the stream is closed for good (not even the browser is retrying). */
  get closed() {
    return !this.es || this.es.readyState === EventSource.CLOSED;
  }

  /** Open the one EventSource; after our own retry it resumes with `?last_event_id=`. */
  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    if (this.es) this.es.close();
    const last = this.lastEventId();
    const es = new EventSource(last ? `api/events?last_event_id=${enc(last)}` : "api/events");
    this.es = es;
    es.onopen = () => {
      if (es !== this.es) return;
      this.attempt = 0;
      this.setState("live");
      if (this.hadError) {
        this.hadError = false;
        this.onReconnected();
      }
    };
    es.onerror = () => {
      if (es !== this.es) return;
      this.hadError = true;
      if (this.state === "live") this.setState("reconnecting");
      // CONNECTING: the browser retries by itself (sending Last-Event-ID). CLOSED: it gave up
      // (a non-200 answer, e.g. a proxy during a restart), so we retry with backoff.
      if (es.readyState === EventSource.CLOSED) this.scheduleReconnect();
    };
    for (const type of STREAM_TYPES) {
      es.addEventListener(type, (event) => {
        if (es === this.es) this.inbox.push(type, event.data, event.lastEventId);
      });
    }
  }

  scheduleReconnect() {
    this.es.close();
    if (this.retryTimer) return;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), base / 2 + (Math.random() * base) / 2); // jitter spreads a crowd
  }
}

/** One `?job=<id>&children=1` stream per manager job while any children view of it is open;
 *  hands its child `job_status` events to `onChild(data)` and says when it (re)starts. The browser resumes it by itself;
 *  the server ends it (204) once the job is over. */
export class ChildStreams {
  constructor({ onChild, onStarted, onBatch }) {
    this.inbox = new Inbox((type, data) => {
      if (type === "snapshot") onStarted(data.jobs[0].id);
      else if (data.kind === "child") onChild(data);
    }, onBatch);
    this.open = new Map(); // manager id -> {es, users}
  }

  acquire(managerId) {
    let entry = this.open.get(managerId);
    if (!entry) {
      entry = { es: this.connect(managerId), users: 0 };
      this.open.set(managerId, entry);
    }
    entry.users += 1;
  }

  connect(managerId) {
    const es = new EventSource(`api/events?job=${enc(managerId)}&children=1`);
    for (const type of ["snapshot", "job_status"]) {
      es.addEventListener(type, (event) => this.inbox.push(type, event.data, event.lastEventId));
    }
    return es;
  }

  /** Reopen the streams the browser gave up on (the server was away), after the all-jobs
   *  stream is back; a fresh stream's snapshot makes their views re-read. */
  revive() {
    for (const [managerId, entry] of this.open) {
      if (entry.es.readyState === EventSource.CLOSED) entry.es = this.connect(managerId);
    }
  }

  release(managerId) {
    const entry = this.open.get(managerId);
    if (!entry) return;
    entry.users -= 1;
    if (entry.users <= 0) {
      entry.es.close();
      this.open.delete(managerId);
    }
  }
}
