// The event streams: the page's all-jobs stream (live / reconnecting / stale, backoff reconnects
// that resume with `?last_event_id=`), and per-job child streams for open children views. Both
// are read with fetch (FetchStream) rather than EventSource, and their events are handed over in
// slices of a few milliseconds, so a stream catching up with thousands of events in one go keeps
// the page responsive.

import { enc } from "./api.js";
import { STREAM_TYPES } from "./store.js";

const STALE_AFTER_MS = 10000; // reconnecting for longer than this is shown as stale
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const SLICE_MS = 8;
const TYPES = new Set(STREAM_TYPES);

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
    this.stream = null;
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

  /** Whether the stream is down and waiting for a retry (or never opened). */
  get closed() {
    return !this.stream || this.stream.stopped;
  }

  /** Open the one stream (read with fetch: see FetchStream); each reconnect resumes with
   *  `?last_event_id=`, so the server continues exactly after the last event applied. */
  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    if (this.stream) this.stream.close();
    const last = this.lastEventId();
    const stream = new FetchStream(
      last ? `api/events?last_event_id=${enc(last)}` : "api/events",
      (type, raw, lastEventId) => {
        if (stream === this.stream && TYPES.has(type)) this.inbox.push(type, raw, lastEventId);
      },
      {
        retry: false,
        onOpen: () => {
          if (stream !== this.stream) return;
          this.attempt = 0;
          this.setState("live");
          if (this.hadError) {
            this.hadError = false;
            this.onReconnected();
          }
        },
        onDrop: () => {
          if (stream !== this.stream) return;
          this.hadError = true;
          if (this.state === "live") this.setState("reconnecting");
          this.scheduleReconnect(stream.retryMs);
        },
      },
    );
    this.stream = stream;
  }

  /** The first retry after the server's `retry:` hint, as EventSource would; then backoff. */
  scheduleReconnect(hintMs) {
    if (this.retryTimer) return;
    const base = BACKOFF_MS[Math.min(this.attempt - 1, BACKOFF_MS.length - 1)];
    const delay = this.attempt === 0 ? hintMs : base / 2 + (Math.random() * base) / 2; // jitter spreads a crowd
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}

/** An event stream read with `fetch` rather than EventSource. Chrome's EventSource dispatches
 *  every event of a network chunk in one task: a burst of 5,000 children finishing was a task
 *  of 1,400 events, 100-200 ms with the page frozen. Here a chunk is only split into raw events
 *  (string work, a few ms) and the Inbox hands them over in slices. As EventSource does, it
 *  follows the server's `retry:` and resumes after a drop where it was (`?last_event_id=`); a
 *  `204` (the job is over) ends it. `onEvent(type, rawData, lastEventId)`. */
export class FetchStream {
  /** `onOpen()` once it answers; `onDrop()` when it drops or is refused, and then, unless
   *  `retry` is false (the caller reconnects itself), it retries after the server's `retry:`. */
  constructor(url, onEvent, { onOpen = () => {}, onDrop = () => {}, retry = true } = {}) {
    this.url = url;
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onDrop = onDrop;
    this.retry = retry;
    this.lastId = "";
    this.retryMs = 1000;
    this.closed = false;
    this.ended = false;
    this.retryTimer = 0;
    this.controller = null;
    this.connect();
  }

  /** Closed for good, or dropped and not retrying by itself. */
  get stopped() {
    return this.closed || this.ended || this.dropped;
  }

  async connect() {
    this.retryTimer = 0;
    this.dropped = false;
    const controller = (this.controller = new AbortController());
    const url = this.lastId ? `${this.url}${this.url.includes("?") ? "&" : "?"}last_event_id=${enc(this.lastId)}` : this.url;
    try {
      const response = await fetch(url, {
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status === 204) {
        this.ended = true;
        this.onDrop();
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      if (this.closed || controller !== this.controller) return;
      this.onOpen();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending = this.parse(pending + value);
      }
    } catch (_) {
      // dropped or refused: retried below, like EventSource
    }
    if (this.closed || controller !== this.controller) return;
    this.dropped = !this.retry;
    this.onDrop();
    if (this.retry) this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
  }

  /** Dispatch the complete events in `text`; the incomplete rest is returned. */
  parse(text) {
    let carry = "";
    if (text.endsWith("\r")) {
      carry = "\r"; // maybe half of a \r\n
      text = text.slice(0, -1);
    }
    text = text.replace(/\r\n?/g, "\n");
    let start = 0;
    let end;
    while ((end = text.indexOf("\n\n", start)) !== -1) {
      let type = "message";
      let data = null;
      for (const line of text.slice(start, end).split("\n")) {
        if (!line || line[0] === ":") continue; // a comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value[0] === " ") value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data = data === null ? value : `${data}\n${value}`;
        else if (field === "id") this.lastId = value;
        else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
      }
      start = end + 2;
      if (data !== null) this.onEvent(type, data, this.lastId);
    }
    return text.slice(start) + carry;
  }

  /** Reconnect now if waiting to retry (the server is back). */
  revive() {
    if (this.closed || this.ended || !this.retryTimer) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.controller) this.controller.abort();
  }
}

/** One `?job=<id>&children=1` stream per manager job while any children view of it is open;
 *  hands its child `job_status` events to `onChild(data)` and says when it starts afresh (a
 *  `snapshot`: what it missed is unknown, so views re-read). It resumes by itself; the server
 *  ends it (204) once the job is over. */
export class ChildStreams {
  constructor({ onChild, onStarted, onBatch }) {
    this.inbox = new Inbox((type, data) => {
      if (type === "snapshot") onStarted(data.jobs[0].id);
      else if (data.kind === "child") onChild(data);
    }, onBatch);
    this.open = new Map(); // manager id -> {stream, users}
  }

  acquire(managerId) {
    let entry = this.open.get(managerId);
    if (!entry) {
      entry = { stream: this.connect(managerId), users: 0 };
      this.open.set(managerId, entry);
    }
    entry.users += 1;
  }

  connect(managerId) {
    return new FetchStream(`api/events?job=${enc(managerId)}&children=1`, (type, raw, lastEventId) => {
      if (type === "snapshot" || type === "job_status") this.inbox.push(type, raw, lastEventId);
    });
  }

  /** The all-jobs stream is back: streams waiting to retry reconnect now. */
  revive() {
    for (const entry of this.open.values()) entry.stream.revive();
  }

  release(managerId) {
    const entry = this.open.get(managerId);
    if (!entry) return;
    entry.users -= 1;
    if (entry.users <= 0) {
      entry.stream.close();
      this.open.delete(managerId);
    }
  }
}
