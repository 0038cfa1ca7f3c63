// The list of manager jobs: live from the stream, narrowed by the filters (search: any part of
// an id or of a definition's name; status; definition), with "load older" paging through the
// jobs API so any job, however old, can be found. Also which jobs are expanded (only by the
// reader: nothing opens by itself). The filters and the open job are in the URL (router.js):
// shared by a link, kept across a reload, followed by back and forward.

import { ApiError } from "../api.js";
import { newestFirst } from "../store.js";
import { JobView } from "./job.js";
import { setText } from "./dom.js";

const PAGE = 20;
const MAX_PAGE = 200; // the jobs API's largest page

export class JobList {
  constructor(app, root) {
    this.app = app;
    this.container = root.querySelector("#jobs");
    this.empty = root.querySelector("#jobs-empty");
    this.message = root.querySelector(".list-message");
    this.olderButton = root.querySelector(".load-older");
    this.olderNote = root.querySelector(".older-note");
    this.inputs = {
      q: root.querySelector("[data-filter=search]"),
      status: root.querySelector("[data-filter=status]"),
      definition: root.querySelector("[data-filter=definition]"),
    };
    this.filter = { q: "", status: "", definition: "" }; // the filters applied (the URL's)
    this.views = new Map(); // manager id -> JobView (of the jobs shown)
    this.loaded = new Set(); // ids the listing API returned for the current filter
    this.next = undefined; // cursor of the next older page; null when there is none
    this.token = 0;
    this.focused = null; // the job in the URL

    let typing = 0;
    this.inputs.q.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => this.filtersChanged(), 250);
    });
    this.inputs.q.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(typing);
        this.filtersChanged();
      }
    });
    this.inputs.status.addEventListener("change", () => this.filtersChanged());
    this.inputs.definition.addEventListener("change", () => this.filtersChanged());
    this.followFilters(app.router.readUrl());
    this.olderButton.addEventListener("click", () => this.loadOlder());
    this.anchor = null; // a linked job kept at the top while the list fills in
    for (const type of ["wheel", "touchstart", "keydown", "mousedown"]) {
      window.addEventListener(type, () => (this.anchor = null), { passive: true });
    }
  }

  get filtering() {
    return Boolean(this.filter.q || this.filter.status || this.filter.definition);
  }

  /** Whether a job passes the filters. The search matches any part of the id or of the
   *  definition's name among the jobs the page holds; older jobs come from the server's `q`
   *  (the same rule: stepstream/queries.py, search_matches). */
  matches(job) {
    const f = this.filter;
    const q = f.q.toLowerCase();
    return (!q || job.id.toLowerCase().includes(q) || job.definition.toLowerCase().includes(q)) &&
      (!f.status || job.status === f.status) &&
      (!f.definition || job.definition === f.definition);
  }

  setDefinitions(names) {
    this.definitions = names;
    this.showFilters();
  }

  /** The inputs show the filters applied. A definition (or status) that is not among the
   *  options (a link to a definition since removed) gets an option of its own. */
  showFilters() {
    const f = this.filter;
    const select = this.inputs.definition;
    const names = [...(this.definitions || [])];
    if (f.definition && !names.includes(f.definition)) names.push(f.definition);
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(select.options[0], ...names.map((name) => new Option(name, name)));
    }
    select.value = f.definition;
    const status = this.inputs.status;
    if (f.status && ![...status.options].some((o) => o.value === f.status)) status.append(new Option(f.status, f.status));
    status.value = f.status;
    if (this.inputs.q.value.trim() !== f.q) this.inputs.q.value = f.q;
  }

  /** The reader changed a filter: apply it and put it in the URL (a history entry). */
  filtersChanged() {
    const filter = {
      q: this.inputs.q.value.trim(),
      status: this.inputs.status.value,
      definition: this.inputs.definition.value,
    };
    if (!this.applyFilter(filter)) return;
    const searched = filter.q !== this.app.router.readUrl().q;
    this.app.router.go(filter, { kind: searched ? "search" : "filter" });
  }

  /** Apply the URL's filters (at load, back and forward): no history entry. */
  followFilters(url) {
    this.applyFilter({ q: url.q, status: url.status, definition: url.definition });
    this.showFilters();
  }

  /** Narrow the list to `filter`; false if it is the one applied already. */
  applyFilter(filter) {
    if (JSON.stringify(filter) === JSON.stringify(this.filter)) return false;
    this.filter = filter;
    this.loaded.clear();
    this.next = undefined;
    this.token += 1; // a page still loading for the old filter is dropped
    this.pin();
    this.app.store.markOrder();
    if (this.filtering) this.loadOlder(); // the first page: old jobs that match, not just the live ones
    return true;
  }

  /** Show every job (a job was opened that the filters hide); the URL follows with the job. */
  clearFilters() {
    this.applyFilter({ q: "", status: "", definition: "" });
    this.showFilters();
  }

  /** The next page of `GET api/jobs` for the current filter; its jobs join the store. */
  async loadOlder() {
    if (this.next === null) return;
    const token = ++this.token;
    const filter = this.filter;
    this.olderButton.disabled = true;
    setText(this.olderNote, "loading…");
    // The first unfiltered page starts with the newest jobs, which the page mostly holds already:
    // ask for enough to reach past them.
    const limit = this.next === undefined && !this.filtering ? Math.min(MAX_PAGE, this.views.size + PAGE) : PAGE;
    try {
      const page = await this.app.commands.listJobs({ ...filter, limit, cursor: this.next });
      if (token !== this.token) return;
      for (const job of page.jobs) this.loaded.add(job.id);
      this.next = page.next;
      setText(this.olderNote, "");
      this.pin();
    } catch (error) {
      if (token === this.token) setText(this.olderNote, `could not load jobs: ${error.message}`);
    } finally {
      if (token === this.token) this.olderButton.disabled = false;
      this.app.store.markOrder();
    }
  }

  /** Jobs the store keeps whatever their age: the URL's, the listed and the expanded ones. */
  pin() {
    const pinned = this.app.store.pinned;
    pinned.clear();
    for (const id of this.loaded) pinned.add(id);
    for (const [id, view] of this.views) if (view.expanded) pinned.add(id);
    if (this.focused) pinned.add(this.focused);
  }

  renderOrder() {
    const store = this.app.store;
    const jobs = [...store.jobs.values()].filter((job) => this.matches(job)).sort(newestFirst);
    const shown = new Set(jobs.map((job) => job.id));
    for (const [id, view] of this.views) {
      if (!shown.has(id)) {
        view.remove();
        this.views.delete(id);
      }
    }
    if (this.focused && store.forgotten.has(this.focused)) this.setFocus(null, { push: false, replace: true }); // deleted
    jobs.forEach((job, position) => {
      let view = this.views.get(job.id);
      if (!view) {
        view = new JobView(this.app, job);
        this.views.set(job.id, view);
        view.setExpanded(job.id === this.focused);
      }
      if (this.container.children[position] !== view.el) {
        this.container.insertBefore(view.el, this.container.children[position] || null);
      }
    });
    this.empty.hidden = jobs.length > 0;
    setText(this.empty, this.filtering ? "No jobs match these filters." : "No jobs yet. Start one above.");
    this.olderButton.hidden = this.next === null;
    if (this.next === null) setText(this.olderNote, jobs.length ? "No older jobs." : "");
  }

  /** After a frame's renders: a linked job stays at the top while the list fills in. */
  keepAnchor() {
    if (!this.anchor) return;
    if (performance.now() > this.anchor.until) this.anchor = null;
    else this.views.get(this.anchor.id)?.el.scrollIntoView({ block: "start" });
  }

  update(id) {
    const job = this.app.store.jobs.get(id);
    const view = this.views.get(id);
    if (job && view) view.update(job);
  }

  /** Advance the running clocks (elapsed times, estimates). */
  tick() {
    const store = this.app.store;
    const now = store.now();
    for (const [id, view] of this.views) {
      const job = store.jobs.get(id);
      if (!job) continue;
      if (job.status === "running" || [...job.steps.values()].some((s) => s.status === "running")) {
        view.updateTimes(job, now);
      } else {
        view.updateStarted(job, now); // "3 min ago" moves on
      }
    }
  }

  /** The user opened or closed a job with its toggle. */
  toggledByUser(view) {
    view.setExpanded(!view.expanded);
    if (view.expanded) this.setFocus(view.id, { push: true });
    else if (this.focused === view.id) this.setFocus(null, { push: true });
    this.pin();
  }

  /** Show job `id` expanded, fetching it if the page does not hold it (however old). */
  async open(id, { push }) {
    const previous = this.focused;
    this.setFocus(id, { push });
    this.pin();
    if (previous && previous !== id) this.views.get(previous)?.setExpanded(false);
    if (!this.app.store.jobs.has(id)) {
      let managerId;
      try {
        managerId = await this.app.commands.locate(id);
      } catch (error) {
        if (this.focused !== id) return;
        this.showMessage(error instanceof ApiError && error.status === 404
          ? `There is no job ${id}.` : `Could not load job ${id}: ${error.message}`);
        return;
      }
      if (this.focused !== id) return;
      if (managerId !== id) {
        this.setFocus(managerId, { replace: true }); // a step's or child's id: show its manager
        this.pin();
        id = managerId;
      }
    }
    if (this.focused !== id) return;
    const job = this.app.store.jobs.get(id);
    if (!job) return;
    if (!this.matches(job)) {
      this.clearFilters(); // the same history entry as the job's
      this.app.router.go({ ...this.filter, job: id }, { replace: true });
    }
    this.app.renderNow();
    const view = this.views.get(id);
    if (!view) return;
    view.setExpanded(true);
    this.showMessage("");
    // A linked job comes to the top, highlighted, with the keyboard focus on its heading.
    view.el.scrollIntoView({ block: "start" });
    // Jobs the stream adds above it while the page loads must not push it away: keep it at the
    // top for a moment, until the reader scrolls.
    this.anchor = { id, until: performance.now() + 3000 };
    view.toggle.focus({ preventScroll: true });
    view.el.classList.add("highlight");
    setTimeout(() => view.el.classList.remove("highlight"), 2500);
  }

  /** Back or forward in history: the URL's filters apply and its job is the one expanded. */
  followUrl(url) {
    this.followFilters(url);
    const id = url.job;
    const previous = this.focused;
    if (previous && previous !== id) this.views.get(previous)?.setExpanded(false);
    if (id) this.open(id, { push: false });
    else this.setFocus(null, { push: false });
    this.pin();
  }

  setFocus(id, { push, replace = false }) {
    this.focused = id;
    const job = id && this.app.store.jobs.get(id);
    if (!id) document.title = "stepstream";
    else if (job) this.app.store.markJob(job); // its view names it in the tab title
    if (push || replace) this.app.router.go({ job: id }, { replace, kind: "job" });
  }

  showMessage(text) {
    this.message.hidden = !text;
    setText(this.message, text);
  }
}
