// An open job's steps on one time axis: each step a bar from its start to its end (a running
// step's bar grows with the clock), and, where the page watched it run, its children's finish
// rate as a sparkline. Every bar says in words what it draws (its row's text), and the sparkline
// has a label with its peak: nothing is only a picture.

import { setAttr, setText } from "./dom.js";
import { duration, localTime, rate, secondsAttr } from "./time.js";

const SVG = "http://www.w3.org/2000/svg";
const BUCKETS = 24; // sparkline points over a step's life
const MAX_SAMPLES = 512; // samples kept per step: beyond this, every other one is dropped

/** How many children of a step had finished, over time, as the page saw it. */
export class Throughput {
  constructor() {
    this.samples = []; // {t, done}, ascending t (server time)
  }

  see(progress, now) {
    const done = progress.completed + progress.failed + progress.cancelled;
    const last = this.samples[this.samples.length - 1];
    if (last && last.done === done) return;
    if (last && now < last.t) now = last.t;
    this.samples.push({ t: now, done });
    if (this.samples.length > MAX_SAMPLES) this.samples = this.samples.filter((_, i) => i % 2 === 0 || i === this.samples.length - 1);
  }

  /** Finishes per second in `BUCKETS` equal spans of [start, end], or null without two samples. */
  rates(start, end) {
    const s = this.samples;
    if (s.length < 2 || end <= start) return null;
    const width = (end - start) / BUCKETS;
    const out = new Array(BUCKETS).fill(0);
    for (let i = 1; i < s.length; i++) {
      const finished = s[i].done - s[i - 1].done;
      if (finished <= 0) continue;
      const bucket = Math.min(BUCKETS - 1, Math.max(0, Math.floor((s[i].t - start) / width)));
      out[bucket] += finished;
    }
    return out.map((n) => n / (width / 1000));
  }
}

export class Timeline {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector(".tl-rows");
    this.span = root.querySelector(".tl-span");
    this.rows = new Map(); // step name -> {li, bar, spark, line, text}
  }

  row(name) {
    let row = this.rows.get(name);
    if (row) return row;
    const li = document.createElement("li");
    li.className = "tl-row";
    li.dataset.timelineStep = name;
    const label = document.createElement("span");
    label.className = "tl-name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "tl-track";
    const bar = document.createElement("span");
    bar.className = "tl-bar";
    const spark = document.createElementNS(SVG, "svg");
    spark.classList.add("tl-spark");
    spark.setAttribute("viewBox", `0 0 ${BUCKETS - 1} 10`);
    spark.setAttribute("preserveAspectRatio", "none");
    spark.setAttribute("role", "img");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    spark.append(line);
    bar.append(spark);
    track.append(bar);
    const text = document.createElement("span");
    text.className = "tl-text";
    li.append(label, track, text);
    row = { li, bar, spark, line, text };
    this.rows.set(name, row);
    return row;
  }

  /** Lay the steps out on the axis from the job's start to `end` (its settling, or now). */
  update(job, stepViews, end) {
    const origin = Date.parse(job.started_at || job.created_at);
    const span = Math.max(1000, end - origin);
    this.root.hidden = !job.steps.size || Number.isNaN(origin);
    if (this.root.hidden) return;
    setText(this.span, `(${duration(span / 1000)} from ${localTime(job.started_at || job.created_at)})`);
    let position = 0;
    for (const step of job.steps.values()) {
      const row = this.row(step.name);
      if (this.list.children[position] !== row.li) this.list.insertBefore(row.li, this.list.children[position] || null);
      position += 1;
      setAttr(row.li, "data-status", step.status);
      const start = step.started_at ? Date.parse(step.started_at) : null;
      const stop = step.finished_at ? Date.parse(step.finished_at) : start != null ? Math.max(start, end) : null;
      row.bar.hidden = start == null;
      setAttr(row.li, "data-start-s", start == null ? null : secondsAttr((start - origin) / 1000));
      setAttr(row.li, "data-end-s", step.finished_at ? secondsAttr((stop - origin) / 1000) : null);
      if (start == null) {
        setText(row.text, step.status === "skipped" ? "skipped" : "not started");
        continue;
      }
      const left = `${(100 * (start - origin)) / span}%`;
      const width = `${(100 * (stop - start)) / span}%`;
      if (row.bar.style.left !== left) row.bar.style.left = left; // CSSOM: allowed by the CSP
      if (row.bar.style.width !== width) row.bar.style.width = width;
      const from = `from +${duration((start - origin) / 1000)}`;
      const took = (stop - start) / 1000;
      setText(row.text, step.finished_at ? `${from}, took ${duration(took)}` : `${from}, running for ${duration(took)}`);
      row.bar.title = `${step.name}: ${localTime(step.started_at)} – ${step.finished_at ? localTime(step.finished_at) : "now"}`;
      this.drawSpark(row, stepViews.get(step.name), start, stop);
    }
  }

  drawSpark(row, sv, start, stop) {
    const rates = sv ? sv.throughput.rates(start, stop) : null;
    const peak = rates ? Math.max(...rates) : 0;
    setAttr(row.spark, "hidden", peak ? null : "");
    if (!peak) {
      setAttr(row.spark, "aria-label", null);
      return;
    }
    const points = rates.map((r, i) => `${i},${(10 - (9 * r) / peak).toFixed(2)}`).join(" ");
    setAttr(row.line, "points", points);
    setAttr(row.spark, "aria-label", `children finished per second, at most ${rate(peak)}`);
  }
}
