// One step of a manager job: its row (status, its own counts, time and estimate) and, when
// open, its failure, its live log and its children.

import { jobPath, enc } from "../api.js";
import { COUNT_KEYS, stepKey } from "../store.js";
import { ChildrenView } from "./children.js";
import { FailureView, buildBar, buildCounts, fmt, fromTemplate, plural, setAttr, setText, statusWords, updateBar,
         updateCounts } from "./dom.js";
import { FailuresView } from "./failures.js";
import { LogView } from "./log.js";
import { Throughput } from "./timeline.js";
import { Pace, duration, elapsedSeconds, etaSeconds, localTime, rate, secondsAttr } from "./time.js";

export class StepView {
  constructor(app, jobView, name) {
    this.app = app;
    this.jobView = jobView;
    this.name = name;
    this.key = stepKey(jobView.id, name);
    this.el = fromTemplate("step-template");
    this.el.dataset.step = name;
    const $ = (sel) => this.el.querySelector(sel);
    this.details = $("details");
    this.status = $(".status");
    this.bar = $(".bar");
    this.counts = $(".counts");
    this.elapsed = $(".elapsed");
    this.eta = $(".eta");
    this.rate = $(".rate");
    this.logCount = $(".log-count");
    this.waiting = $(".waiting");
    this.failure = new FailureView($(".step-failure"));
    this.failures = new FailuresView(app, jobView.id, name, $(".step-failures"), (group) => this.children.showGroup(group));
    setText($(".step-name"), name);
    const download = $("[data-action=download-logs]");
    download.href = `${jobPath(jobView.id)}/logs?format=text&step=${enc(name)}`;
    download.download = `${jobView.id}-${name}.log`;
    download.setAttribute("aria-label", `Download log of step ${name}`);
    $(".log").setAttribute("aria-label", `log of step ${name}`);
    $(".children-toggle").setAttribute("aria-label", `Show children of step ${name}`);
    buildBar(this.bar, `progress of step ${name}`);
    buildCounts(this.counts);
    this.wantOpen = false;
    this.pace = new Pace();
    this.throughput = new Throughput(); // for the timeline's sparkline
    this.log = new LogView(app, this, $(".log-tools"), $(".log"));
    this.children = new ChildrenView(app, this, $(".children"));
    this.details.addEventListener("toggle", () => {
      if (this.details.open !== this.wantOpen) {
        this.wantOpen = this.details.open; // the user's choice: stop following the running step
        this.jobView.follow = false;
      }
      this.failures.setActive(this.details.open);
      if (this.details.open) {
        this.log.activate();
      } else {
        this.log.deactivate();
        this.children.close(); // a closed step keeps nothing live
      }
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
    const words = statusWords(step);
    setText(this.status, words.text);
    setAttr(el, "data-outcome", words.outcome);
    updateBar(this.bar, step.progress); // the step's own counts, never the manager's
    updateCounts(this.counts, step.progress);
    setText(this.logCount, plural(step.log_count, "log line"));
    this.failure.update(step);
    this.failures.setFailed(step.progress.failed);
    if (step.status === "running") this.pace.see(step.progress, this.app.store.now());
    if (step.status === "running" || (step.finished_at && this.throughput.samples.length)) {
      // A step's last children may end with it: its end is their time.
      const now = step.finished_at ? Date.parse(step.finished_at) : this.app.store.now();
      this.throughput.see(step.progress, now);
    }
    this.log.setTotal(step.log_count);
    this.children.setStep(step);
  }

  updateTimes(step, now) {
    const s = elapsedSeconds(step, now);
    setAttr(this.el, "data-elapsed-s", secondsAttr(s));
    setText(this.elapsed, s == null ? "" : step.finished_at ? `took ${duration(s)}` : duration(s));
    this.elapsed.title = step.started_at ? `started ${localTime(step.started_at)}` : "";
    const eta = etaSeconds(step, now, this.pace);
    setAttr(this.el, "data-eta-s", secondsAttr(eta));
    const discovering = step.status === "running" && this.pace.growing(now);
    setAttr(this.el, "data-discovering", discovering ? "true" : null);
    const rates = step.status === "running" ? this.pace.rates(now) : null;
    let text = "";
    let title = "";
    setText(this.rate, rates && rates.done > 0 ? ` · ${rate(rates.done)}` : "");
    this.rate.title = rates && rates.done > 0 ? "children finished per second, over the last 30 s" : "";
    if (discovering) {
      text = `discovering: ${fmt(step.progress.total)} so far`;
      title = "still finding work: no estimate until it stops";
    } else if (eta != null) {
      text = `~${duration(eta)} left`;
      title = rates && rates.done > 0 ? `at ${rate(rates.done)}, the rate of the last 30 s` : "at the rate since it started";
    }
    setText(this.eta, text);
    this.eta.title = title;
    this.updateWaiting(step);
  }

  /** A running step with pending children while every worker is busy says they wait for one. */
  updateWaiting(step) {
    const words = waitingWords(step, this.app.store.workers);
    setAttr(this.el, "data-waiting", words ? "true" : null);
    setText(this.waiting, words);
    this.waiting.hidden = !words;
    this.waiting.title = words && this.app.store.workers.scope === "process"
      ? "the workers of this server; other processes may run work too" : "";
  }

  close() {
    this.log.deactivate();
    this.children.close();
  }
}

/** "waiting for a worker (4 of 4 busy)" for a running step with pending children while every
 *  worker is busy; "" otherwise. `workers` is `api/health`'s: `scope` `deployment` counts every
 *  worker, `process` only this server's (Redis: others may have some); null (Celery, or not read
 *  yet) says nothing. */
export function waitingWords(step, workers) {
  if (step.status !== "running" || !step.progress.pending || !workers) return "";
  const { size, busy, scope } = workers;
  if (!size || busy < size) return "";
  const whose = scope === "process" ? "this server's " : "";
  return `${fmt(step.progress.pending)} waiting for a worker (${whose}${fmt(busy)} of ${fmt(size)} busy)`;
}
