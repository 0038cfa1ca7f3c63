// Small DOM helpers shared by the views: writes only when a value changed, text only (never HTML).

import { COUNT_KEYS } from "../store.js";

const BAR_SEGMENTS = ["completed", "failed", "cancelled", "running"];

export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export function setAttr(el, name, value) {
  if (value == null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

export function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

/** A count with thousands separators, the same in every browser locale: 12,345. */
export const fmt = (n) => n.toLocaleString("en-US");

/** The words of a job's or step's status pill, and `outcome` "partial" when it completed with
 *  failed children (it looks different from a clean completion). The status is the server's. */
export function statusWords(item) {
  const failed = item.progress.failed;
  if (item.status === "completed" && failed > 0) return { text: `completed, ${fmt(failed)} failed`, outcome: "partial" };
  return { text: item.status, outcome: null };
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** A progress bar of coloured segments (widths set through the CSSOM: allowed by the CSP). */
export function buildBar(bar, label) {
  setAttr(bar, "aria-label", label);
  for (const key of BAR_SEGMENTS) {
    const seg = document.createElement("span");
    seg.className = `seg seg-${key}`;
    bar.append(seg);
  }
}

export function updateBar(bar, p) {
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

/** How far a manager job is, 0..1: its finished steps plus the running step's finished share.
 *  (The sum of every step's children would fall each time a later step fans out.) */
export function jobFraction(job) {
  const steps = [...job.steps.values()];
  if (!steps.length) return TERMINAL_JOB.has(job.status) ? 1 : 0;
  let value = 0;
  for (const step of steps) {
    if (TERMINAL_JOB.has(step.status)) value += 1;
    else if (step.status === "running" && step.progress.total) {
      const p = step.progress;
      value += (p.completed + p.failed + p.cancelled) / p.total;
    }
  }
  return value / steps.length;
}

const TERMINAL_JOB = new Set(["completed", "failed", "cancelled", "skipped"]);

/** A manager's bar: one fill of `fraction` (never less than what it showed before: the caller
 *  keeps the floor), coloured by how the job is going. */
export function updateJobBar(bar, job, fraction) {
  const percent = Math.round(fraction * 1000) / 10;
  setAttr(bar, "aria-valuemax", "100");
  setAttr(bar, "aria-valuenow", String(percent));
  const steps = [...job.steps.values()];
  const finished = steps.filter((s) => TERMINAL_JOB.has(s.status)).length;
  setAttr(bar, "aria-valuetext", `${percent}%: ${finished} of ${plural(steps.length, "step")} finished`);
  const fill = job.status === "failed" ? "failed" : job.status === "cancelled" ? "cancelled" : "completed";
  BAR_SEGMENTS.forEach((key, i) => {
    const width = key === fill ? `${percent}%` : "0%";
    const seg = bar.children[i];
    if (seg.style.width !== width) seg.style.width = width;
  });
}

export function buildCounts(el) {
  for (const key of COUNT_KEYS) {
    const span = document.createElement("span");
    span.className = `count count-${key}`;
    const n = document.createElement("b");
    span.append(n, ` ${key}`);
    el.append(span);
  }
}

export function updateCounts(el, p) {
  COUNT_KEYS.forEach((key, i) => {
    const span = el.children[i];
    setText(span.firstChild, fmt(p[key]));
    span.classList.toggle("zero", p[key] === 0);
  });
}

/** Copy an id: with the Clipboard API where the page may use it, else the id is selected (in
 *  `target`) for the reader's Ctrl+C. `note` says which, for a moment. */
export async function copyId(text, target, note) {
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      copied = true;
    }
  } catch (_) {
    copied = false; // refused (no permission, not focused): fall back to a selection
  }
  if (!copied) {
    const range = document.createRange();
    range.selectNodeContents(target);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      copied = document.execCommand("copy");
    } catch (_) {
      copied = false;
    }
  }
  setText(note, copied ? "copied" : "selected: press Ctrl+C");
  clearTimeout(note.clearing);
  note.clearing = setTimeout(() => setText(note, ""), 3000);
}

/** Shows a failure's one-line `error`, and its `traceback` when the reader opens it. */
export class FailureView {
  constructor(root) {
    this.root = root;
    this.error = root.querySelector(".error");
    this.details = root.querySelector(".traceback");
    this.traceback = root.querySelector("[data-traceback]");
  }

  update(item) {
    this.root.hidden = !item.error;
    setText(this.error, item.error || "");
    this.details.hidden = !item.traceback;
    setText(this.traceback, item.traceback || ""); // text only: tracebacks quote job data
  }
}
