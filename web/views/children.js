// A step's children, fetched a page at a time (never one DOM row per child of a big step) and
// kept live while open by the job's child stream. Rows are shown as a tree: each child under
// the job that spawned it; sorted by status or duration, the page's rows are a flat list in
// that order, and a row that changes moves to its new place (the same row, never rebuilt).

import { api, enc, jobPath } from "../api.js";
import { TERMINAL } from "../store.js";
import { copyId, setAttr, setText } from "./dom.js";
import { duration, elapsedSeconds, localTime } from "./time.js";

const CHILDREN_PAGE = 50;
const INDENT_EM = 1.2;
const MAX_INDENT = 6; // deeper children line up at this depth: the row never overflows
// Sorted by status, what needs a look comes first.
const STATUS_ORDER = { failed: 0, running: 1, pending: 2, cancelled: 3, completed: 4 };

export class ChildrenView {
  constructor(app, stepView, root) {
    this.app = app;
    this.sv = stepView;
    this.key = stepView.key;
    this.managerId = stepView.jobView.id;
    this.toggle = root.querySelector(".children-toggle");
    this.panel = root.querySelector(".children-panel");
    this.statusSelect = root.querySelector(".children-status");
    this.sortSelect = root.querySelector(".children-sort");
    this.tbody = root.querySelector("tbody");
    this.first = root.querySelector(".children-first");
    this.next = root.querySelector(".children-next");
    this.note = root.querySelector(".children-note");
    this.groupChip = root.querySelector(".children-group");
    this.groupError = root.querySelector(".children-group-error");
    this.group = null; // a failure group ({step, error}) narrowing the panel to its children
    this.onlyChip = root.querySelector(".children-only");
    this.onlyId = root.querySelector(".children-only-id");
    this.only = null; // one child's id (from a log line): the panel shows that child alone
    this.cursor = 0;
    this.nextCursor = null;
    this.token = 0;
    this.open = false;
    this.streaming = false;
    this.total = 0;
    this.rows = new Map(); // child id -> <tr>
    this.ordered = []; // the page's rows in display order, with their tree level
    this.shape = ""; // "flat" or "tree": how the rows were laid out
    this.ticked = false;
    this.toggle.addEventListener("click", () => (this.open ? this.close() : this.show()));
    this.first.addEventListener("click", () => this.load(0));
    this.next.addEventListener("click", () => this.nextCursor != null && this.load(this.nextCursor));
    this.statusSelect.addEventListener("change", () => {
      this.setGroup(null);
      this.load(0);
    });
    this.sortSelect.addEventListener("change", () => {
      const entry = this.app.store.children.get(this.key);
      if (entry) entry.reshape = true; // the same rows, laid out in the new order
      this.app.redraw(this);
    });
    for (const clear of root.querySelectorAll(".children-group-clear, .children-only-clear")) {
      clear.addEventListener("click", () => {
        this.setGroup(null);
        this.statusSelect.value = "";
        this.load(0);
        this.toggle.focus();
      });
    }
    this.tbody.addEventListener("click", (event) => {
      const copy = event.target.closest("button.copy");
      if (!copy) return;
      const cell = copy.closest("td");
      copyId(copy.closest("tr").dataset.child, cell.querySelector("code"), cell.querySelector(".copy-note"));
    });
  }

  /** Narrow the panel to a failure group (or, with `only`, to one child); null: all children. */
  setGroup(group, only = null) {
    this.group = group;
    this.groupChip.hidden = !group;
    setText(this.groupError, group ? group.error : "");
    this.only = only;
    this.onlyChip.hidden = !only;
    setText(this.onlyId, only || "");
  }

  /** Show one child alone (a log line's writer), live while the step runs. */
  showChild(id) {
    this.setGroup(null, id);
    this.statusSelect.value = "";
    if (this.open) this.load(0);
    else this.show();
    this.panel.scrollIntoView({ block: "nearest" });
  }

  /** Show only the children of a failure group (`GET api/jobs/{id}/failures?error=`). */
  showGroup(group) {
    this.setGroup(group);
    this.statusSelect.value = "failed";
    if (this.open) this.load(0);
    else this.show();
  }

  /** The step's latest state: its child count, and whether the job can still change. */
  setStep(step) {
    this.total = step.progress.total;
    if (this.open && this.streaming && TERMINAL.has(step.status)) {
      // Every child inside is final now; the child stream may still lag behind the all-jobs
      // stream that said so, so read the final rows instead of waiting for it.
      this.stopStream();
      this.load(this.cursor);
    }
    if (this.open) this.app.redraw(this);
  }

  show() {
    this.sv.jobView.follow = false; // the reader is looking at this step: keep it open
    this.open = true;
    this.panel.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    setText(this.toggle, "Hide children");
    this.toggle.setAttribute("aria-label", `Hide children of step ${this.sv.name}`);
    this.app.store.watchChildren(this.key);
    this.app.childrenViews.set(this.key, this);
    const step = this.app.store.jobs.get(this.managerId)?.steps.get(this.sv.name);
    if (step && !TERMINAL.has(step.status)) {
      this.app.childStreams.acquire(this.managerId); // a fresh stream makes the page re-read
      this.streaming = true;
    }
    this.load(0);
  }

  close() {
    if (!this.open) return;
    this.open = false;
    this.token += 1;
    this.panel.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
    setText(this.toggle, "Show children");
    this.toggle.setAttribute("aria-label", `Show children of step ${this.sv.name}`);
    this.stopStream();
    this.setGroup(null);
    if (this.app.childrenViews.get(this.key) === this) {
      this.app.store.unwatchChildren(this.key);
      this.app.childrenViews.delete(this.key);
    }
    this.tbody.replaceChildren();
    this.rows.clear();
    this.ordered = [];
    this.shape = "";
  }

  stopStream() {
    if (!this.streaming) return;
    this.streaming = false;
    this.app.childStreams.release(this.managerId);
  }

  async load(cursor) {
    const token = ++this.token;
    const status = this.statusSelect.value;
    const group = this.group;
    const only = this.only;
    const query = `step=${enc(this.sv.name)}&limit=${CHILDREN_PAGE}&cursor=${cursor}` +
      (group ? `&error=${enc(group.error)}` : status ? `&status=${enc(status)}` : "");
    setText(this.note, "loading…");
    this.app.store.beginChildrenPage(this.key);
    try {
      const page = only
        ? { children: [(await api(jobPath(only))).job], next: null }
        : await api(`${jobPath(this.managerId)}/${group ? "failures" : "children"}?${query}`);
      if (token !== this.token) return;
      this.cursor = cursor;
      this.nextCursor = page.next;
      this.status = status;
      this.failure = "";
      // A group's page never grows by live events: its children are failed, so final.
      this.app.store.setChildrenPage(this.key, page.children, !group && !only && page.next == null, status);
    } catch (error) {
      if (token !== this.token) return;
      this.failure = `could not load children: ${error.message}`;
      this.app.store.setChildrenPage(this.key, [], false, status);
    }
  }

  /** Rows of the current page in tree order: each child after its parent, with its depth. */
  treeOrder(rows) {
    const below = new Map(); // parent id -> children on this page
    const roots = [];
    for (const row of rows.values()) {
      if (row.parent_id && rows.has(row.parent_id)) {
        if (!below.has(row.parent_id)) below.set(row.parent_id, []);
        below.get(row.parent_id).push(row);
      } else {
        roots.push(row);
      }
    }
    const ordered = [];
    const visit = (row, level) => {
      ordered.push({ row, level });
      for (const child of below.get(row.id) || []) visit(child, level + 1);
    };
    for (const row of roots) visit(row, row.depth != null ? row.depth : 1);
    return ordered;
  }

  /** The page's rows in the chosen order (creation order, as the API gave them, breaks ties). */
  sortedOrder(rows, sort, now) {
    const list = [...rows.values()].map((row, index) => ({ row, level: 1, index }));
    const key = sort === "status"
      ? ({ row }) => STATUS_ORDER[row.status] ?? 5
      : ({ row }) => { const s = elapsedSeconds(row, now); return s == null ? Infinity : -s; }; // longest first
    const keys = new Map(list.map((item) => [item, key(item)]));
    return list.sort((a, b) => keys.get(a) - keys.get(b) || a.index - b.index);
  }

  render() {
    if (!this.open) return;
    const entry = this.app.store.children.get(this.key);
    if (!entry) return;
    if (entry.reload) {
      entry.reload = false;
      this.load(this.cursor);
    }
    const now = this.app.store.now();
    // Filtered, a page holds some children but not their parents: a flat list, no tree markers
    // that would suggest false parents.
    const sort = this.sortSelect.value;
    const flat = Boolean(this.status || this.group || this.only || sort);
    const shape = flat ? "flat" : "tree";
    if (entry.reshape || this.shape !== shape) {
      // Rows came or went: lay the page out again (rows kept, in tree order).
      entry.reshape = false;
      this.shape = shape;
      setAttr(this.tbody.parentElement, "data-tree", shape);
      this.ordered = sort ? this.sortedOrder(entry.rows, sort, now) : flat ? [...entry.rows.values()].map((row) => ({ row, level: 1 })) : this.treeOrder(entry.rows);
      const fragment = document.createDocumentFragment();
      const seen = new Set();
      for (const { row, level } of this.ordered) {
        let tr = this.rows.get(row.id);
        if (!tr) {
          tr = childRowElement();
          this.rows.set(row.id, tr);
        }
        updateChildRow(tr, row, row.depth != null ? row.depth : level, flat ? 1 : null, now);
        seen.add(row.id);
        fragment.append(tr);
      }
      for (const id of this.rows.keys()) if (!seen.has(id)) this.rows.delete(id);
      this.tbody.replaceChildren(fragment);
    } else {
      // The same rows: update in place only those that changed (and, on a tick, the running
      // ones' times). A big running step's panel costs what changed, not a rebuilt table.
      const levels = new Map(this.ordered.map(({ row, level }) => [row.id, level]));
      const update = (row) => {
        const tr = this.rows.get(row.id);
        if (tr) updateChildRow(tr, row, row.depth != null ? row.depth : levels.get(row.id) || 1, flat ? 1 : null, now);
      };
      for (const id of entry.changed) {
        const row = entry.rows.get(id);
        if (row) update(row);
      }
      if (this.ticked) for (const row of entry.rows.values()) if (row.status === "running") update(row);
      if (sort && (entry.changed.size || (this.ticked && sort === "duration"))) this.reorder(this.sortedOrder(entry.rows, sort, now));
    }
    entry.changed.clear();
    this.ticked = false;
    const ordered = this.ordered;
    this.next.disabled = this.nextCursor == null;
    this.first.disabled = this.cursor === 0;
    let note = "";
    if (this.failure) note = this.failure;
    else if (entry.loading) note = "loading…";
    else if (!ordered.length && this.cursor === 0) {
      if (this.status) note = `No ${this.status} children.`;
      else if (this.total) note = "No children on this page.";
      else note = this.streaming ? "This step has no children yet." : "This step has no children.";
    }
    setText(this.note, note);
  }

  /** Move the rows whose place changed (the same elements: nothing is rebuilt). */
  reorder(ordered) {
    const moved = ordered.some((item, i) => this.ordered[i]?.row.id !== item.row.id);
    this.ordered = ordered;
    if (!moved) return;
    let at = this.tbody.firstElementChild;
    for (const { row } of ordered) {
      const tr = this.rows.get(row.id);
      if (!tr) continue;
      if (tr === at) at = at.nextElementSibling;
      else this.tbody.insertBefore(tr, at);
    }
  }

  /** Whether a row's time ticks (some child on the page is running); the next render then
   *  updates the running rows' times. */
  get ticking() {
    const entry = this.app.store.children.get(this.key);
    this.ticked = !!entry && [...entry.rows.values()].some((row) => row.status === "running");
    return this.ticked;
  }
}

const COLUMNS = ["id", "name", "status", "attempt", "time", "error"];

function childRowElement() {
  const tr = document.createElement("tr");
  for (const column of COLUMNS) {
    const td = document.createElement("td");
    td.className = `child-${column}`;
    tr.append(td);
  }
  const id = document.createElement("code");
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "copy";
  const note = document.createElement("span");
  note.className = "copy-note";
  note.setAttribute("role", "status");
  tr.cells[0].append(id, " ", copy, note);
  const error = document.createElement("span");
  const earlier = document.createElement("span");
  earlier.className = "child-attempts"; // the errors of its earlier attempts, when it was retried
  const details = document.createElement("details");
  details.className = "traceback";
  const summary = document.createElement("summary");
  summary.textContent = "Traceback";
  const pre = document.createElement("pre");
  pre.dataset.traceback = "";
  details.append(summary, pre);
  tr.cells[5].append(error, earlier, details);
  return tr;
}

function updateChildRow(tr, row, depth, indentDepth, now) {
  const [idCell, nameCell, statusCell, attemptCell, timeCell, errorCell] = tr.cells;
  setAttr(tr, "data-child", row.id);
  setAttr(tr, "data-status", row.status);
  setAttr(tr, "data-depth", String(depth));
  setAttr(tr, "data-parent", row.parent_id || null);
  const indent = `${Math.min(Math.max((indentDepth ?? depth) - 1, 0), MAX_INDENT) * INDENT_EM}em`;
  if (idCell.style.paddingInlineStart !== indent) idCell.style.paddingInlineStart = indent; // CSSOM: allowed by the CSP
  setText(idCell.firstChild, row.id);
  setAttr(idCell.children[1], "aria-label", `Copy id of child ${row.id}`);
  idCell.title = row.parent_id ? `spawned by ${row.parent_id}` : "";
  const call = row.summary ? `${row.name || ""}(${row.summary})` : row.name || ""; // which call this is
  setText(nameCell, call);
  setAttr(nameCell, "title", call || null); // the whole call on hover: a long one is cut with "…"
  setText(statusCell, row.status);
  setText(attemptCell, row.retries ? `${row.attempt} of ${row.retries + 1}` : String(row.attempt ?? ""));
  const s = elapsedSeconds(row, now);
  setText(timeCell, s == null ? "" : duration(s));
  timeCell.title = row.started_at ? `started ${localTime(row.started_at)}` : "";
  setText(errorCell.firstChild, row.error || "");
  const earlier = errorCell.children[1];
  const attempts = row.attempts || [];
  setAttr(earlier, "data-attempts", attempts.length ? String(attempts.length) : null);
  setText(earlier, attempts.map((a) => `attempt ${a.attempt}: ${a.error}`).join("; "));
  const details = errorCell.lastChild;
  details.hidden = !row.traceback;
  setText(details.lastChild, row.traceback || ""); // text only
}
