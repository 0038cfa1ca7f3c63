// What the page asks of the server (read a job, list jobs, start, cancel, rerun, delete); each
// answer goes into the store, never straight to a view.

import { ApiError, api, jobPath, query, send } from "./api.js";
import { isActive } from "./store.js";

export class Commands {
  constructor(store) {
    this.store = store;
  }

  /** Read one manager's snapshot and apply it where it is newer than what the store holds.
   *  Failures are quiet unless `strict` (then they throw). */
  async fetchJob(id, { strict = false } = {}) {
    const store = this.store;
    if (store.fetching.has(id) && !strict) return;
    store.fetching.add(id);
    const epoch = store.epoch;
    try {
      const snap = await api(jobPath(id));
      if (snap.job.kind !== "manager") throw new ApiError(400, "not_a_manager", `job ${id} is a ${snap.job.kind} job`);
      if (epoch === store.epoch || !store.jobs.has(id)) store.applyManager(snap.job, snap.seq);
    } catch (error) {
      if (strict) throw error;
      if (error instanceof ApiError && error.status === 404 && store.jobs.has(id)) store.removeJob(id); // deleted meanwhile
      else if (!(error instanceof ApiError)) console.warn("stepstream: could not fetch job", id, error);
    } finally {
      if (epoch === store.epoch) store.fetching.delete(id);
    }
  }

  /** The manager job `id` is or belongs to (a step's or child's id leads to its manager),
   *  read into the store. Throws ApiError (404 for an unknown id). */
  async locate(id) {
    const snap = await api(jobPath(id));
    if (snap.job.kind === "manager") {
      this.store.applyManager(snap.job, snap.seq);
      return id;
    }
    await this.fetchJob(snap.job.manager_id, { strict: true });
    return snap.job.manager_id;
  }

  /** Re-read every job that may still change: periodically, after a reconnect, when visible. */
  reconcile() {
    for (const job of this.store.jobs.values()) if (isActive(job)) this.fetchJob(job.id);
  }

  /** Read the jobs that events named but the store does not hold. */
  fetchMissing() {
    for (const id of this.store.missing) if (!this.store.fetching.has(id)) this.fetchJob(id);
  }

  /** One page of `GET api/jobs`; its jobs join the store, pinned (they may be old). */
  async listJobs({ q, status, definition, limit, cursor }) {
    const page = await api(`api/jobs${query({ q, status, definition, limit, cursor })}`);
    for (const job of page.jobs) {
      this.store.pinned.add(job.id);
      this.store.applyManager(job, page.seq);
    }
    return page;
  }

  async definitions() {
    return (await api("api/definitions")).definitions;
  }

  /** The server's clock, to show times right whatever the browser's clock says. */
  async syncClock() {
    const sent = Date.now();
    const health = await api("api/health");
    if (health.time) this.store.syncClock(health.time, (sent + Date.now()) / 2);
  }

  async start(definition, params) {
    const snap = await send("POST", "api/jobs", { definition, params });
    this.store.applyManager(snap.job, snap.seq);
    return snap.job.id;
  }

  async cancel(id) {
    try {
      const snap = await send("POST", `${jobPath(id)}/cancel`);
      this.store.applyManager(snap.job, snap.seq);
    } catch (error) {
      if (error.status !== 409) throw error;
      this.fetchJob(id); // it had already finished: show how
    }
  }

  async rerun(id) {
    const snap = await send("POST", `${jobPath(id)}/rerun`);
    this.store.applyManager(snap.job, snap.seq);
    return snap.job.id;
  }

  async remove(id) {
    await send("DELETE", jobPath(id));
    this.store.removeJob(id);
  }
}
