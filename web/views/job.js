// One manager job: its head row (status, bar, counts, time, actions), its failure, and when
// expanded its params and steps.

import { jobPath } from "../api.js";
import { TERMINAL, isActive } from "../store.js";
import { FailureView, buildBar, buildCounts, copyId, fromTemplate, jobFraction, plural, setAttr, setText, statusWords,
         updateCounts, updateJobBar } from "./dom.js";
import { FailuresView } from "./failures.js";
import { StepView } from "./step.js";
import { Timeline } from "./timeline.js";
import { ago, duration, elapsedSeconds, exactTime, localTime, secondsAttr } from "./time.js";

const CONFIRM = {
  cancel: { text: "Cancel this job? Pending children are cancelled, running ones are asked to stop.",
            yes: "Yes, cancel it", no: "Keep running" },
  delete: { text: "Delete this job with its steps, children and logs? This cannot be undone.",
            yes: "Yes, delete it", no: "Keep it" },
};

/** When the job finished, once it is settled (the server's `finished_at`: a cancelled job ends
 *  with its last step), or null while it or any of its steps still runs. */
function settledAt(job) {
  return isActive(job) ? null : job.finished_at;
}

export class JobView {
  constructor(app, job) {
    this.app = app;
    this.id = job.id;
    this.el = fromTemplate("job-template");
    this.el.dataset.job = job.id;
    const $ = (sel) => this.el.querySelector(sel);
    this.toggle = $(".toggle");
    this.definition = $(".definition");
    this.status = $(".status");
    this.bar = $(".bar");
    this.counts = $(".counts");
    this.elapsed = $(".elapsed");
    this.started = $(".started");
    this.logCount = $(".log-count");
    this.actions = {};
    for (const button of this.el.querySelectorAll(".job-head [data-action]")) this.actions[button.dataset.action] = button;
    this.confirm = $(".confirm");
    this.confirmText = $(".confirm-text");
    this.confirmYes = $(".confirm-yes");
    this.confirmNo = $(".confirm-no");
    this.rerunOf = $(".rerun-of");
    this.failure = new FailureView($(".job-failure"));
    this.failures = new FailuresView(app, job.id, null, $(".job-failures"), (group) => this.showFailed(group));
    // The groups are read only while the job is on screen (a list of 100 jobs asks for none).
    this.visibility = new IntersectionObserver((entries) => {
      for (const entry of entries) this.failures.setActive(entry.isIntersecting);
    });
    this.visibility.observe(this.el);
    this.body = $(".job-body");
    this.params = $(".params-json");
    this.stepList = $(".steps");
    this.timeline = new Timeline($(".timeline"));
    this.message = $(".job-message");
    setText($(".job-id"), job.id);
    this.body.id = `job-body-${job.id}`;
    this.toggle.setAttribute("aria-controls", this.body.id);
    this.labelled = ""; // the definition the buttons' labels name
    const copy = $("[data-copy]");
    copy.setAttribute("aria-label", `Copy id of job ${job.id}`);
    copy.addEventListener("click", () => copyId(job.id, $(".job-id"), $(".copy-note")));
    this.actions["download-logs"].href = `${jobPath(job.id)}/logs?format=text`;
    this.actions["download-logs"].download = `${job.id}.log`;
    buildBar(this.bar, `progress of job ${job.id}`);
    buildCounts(this.counts);
    this.steps = new Map(); // step name -> StepView
    this.expanded = false;
    this.follow = true; // open the running step's logs until the user picks steps themselves
    this.pendingConfirm = null;
    this.barFloor = 0; // the job's bar never runs backwards

    this.toggle.addEventListener("click", () => app.list.toggledByUser(this));
    this.actions.cancel.addEventListener("click", () => this.ask("cancel"));
    this.actions.delete.addEventListener("click", () => this.ask("delete"));
    this.actions.rerun.addEventListener("click", () => this.rerun());
    this.confirmNo.addEventListener("click", () => this.closeConfirm(true));
    this.confirmYes.addEventListener("click", () => this.confirmed());
    this.confirm.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.closeConfirm(true);
    });
    this.rerunOf.querySelector("a").addEventListener("click", (event) => {
      event.preventDefault();
      app.list.open(this.rerunOfId, { push: true });
    });
  }

  setExpanded(expanded) {
    this.expanded = expanded;
    this.el.dataset.expanded = String(expanded);
    this.toggle.setAttribute("aria-expanded", String(expanded));
    this.body.hidden = !expanded;
    if (!expanded) for (const sv of this.steps.values()) sv.setOpen(false);
    const job = this.app.store.jobs.get(this.id);
    if (job) {
      if (expanded && job.params === undefined) this.app.commands.fetchJob(this.id); // listings carry no params
      this.update(job);
    }
  }

  update(job) {
    setAttr(this.el, "data-status", job.status);
    setText(this.definition, job.definition);
    if (this.labelled !== job.definition) {
      // Each button names its job: a list of jobs is not dozens of identical "Delete"s.
      this.labelled = job.definition;
      const who = `${job.definition} ${job.id}`;
      for (const [action, words] of [["cancel", "Cancel"], ["rerun", "Rerun"], ["delete", "Delete"], ["download-logs", "Logs of"]]) {
        this.actions[action].setAttribute("aria-label", `${words} ${who}`);
      }
    }
    if (this.app.list.focused === this.id) document.title = `${job.definition} ${statusWords(job).text} · stepstream`;
    const words = statusWords(job);
    setText(this.status, words.text);
    setAttr(this.el, "data-outcome", words.outcome);
    this.toggle.title = `created ${localTime(job.created_at)}`;
    this.barFloor = Math.max(this.barFloor, jobFraction(job));
    updateJobBar(this.bar, job, this.barFloor);
    updateCounts(this.counts, job.progress);
    setText(this.logCount, plural(job.log_count, "log line"));
    const settled = !isActive(job);
    this.actions.cancel.hidden = TERMINAL.has(job.status);
    this.actions.rerun.hidden = !TERMINAL.has(job.status);
    this.actions.delete.hidden = !settled;
    if (this.pendingConfirm === "cancel" && TERMINAL.has(job.status)) this.closeConfirm(false);
    if (this.pendingConfirm === "delete" && !settled) this.closeConfirm(false);
    this.rerunOfId = job.rerun_of || null;
    this.rerunOf.hidden = !job.rerun_of;
    if (job.rerun_of) {
      const link = this.rerunOf.querySelector("a");
      setText(link, job.rerun_of);
      link.href = `?job=${encodeURIComponent(job.rerun_of)}`;
    }
    this.failure.update(job);
    this.failures.setFailed(job.progress.failed);
    this.updateTimes(job, this.app.store.now());
    setText(this.params, job.params === undefined ? "loading…" : JSON.stringify(job.params, null, 2));
    let position = 0;
    for (const step of job.steps.values()) {
      let sv = this.steps.get(step.name);
      if (!sv) {
        sv = new StepView(this.app, this, step.name);
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

  /** Elapsed time of the job and (when shown) its steps: ticks while they run. */
  updateTimes(job, now) {
    // A job took until its last step settled: a cancelled job's steps may settle after it.
    const end = settledAt(job);
    const s = elapsedSeconds({ started_at: job.started_at, finished_at: end }, now);
    setAttr(this.el, "data-elapsed-s", secondsAttr(s));
    let text = "";
    if (s != null) text = end ? `took ${duration(s)}` : `${duration(s)}`;
    setText(this.elapsed, text);
    this.elapsed.title = job.started_at ? `started ${localTime(job.started_at)}` : "";
    this.updateStarted(job, now);
    for (const step of job.steps.values()) {
      const sv = this.steps.get(step.name);
      if (sv) sv.updateTimes(step, now);
    }
    if (this.expanded) this.timeline.update(job, this.steps, end ? Date.parse(end) : now);
  }

  /** Open the step of a failure group with its children panel showing that group. */
  showFailed(group) {
    if (!this.expanded) this.app.list.toggledByUser(this);
    const sv = this.steps.get(group.step);
    if (!sv) return;
    this.follow = false;
    sv.setOpen(true);
    sv.children.showGroup(group);
    sv.el.scrollIntoView({ block: "start" });
  }

  updateStarted(job, now) {
    const began = job.started_at || job.created_at;
    setText(this.started, began ? ago(began, now) : "");
    this.started.title = began ? `started ${exactTime(began)}` : "";
  }

  showMessage(text) {
    this.message.hidden = !text;
    setText(this.message, text);
  }

  ask(kind) {
    const words = CONFIRM[kind];
    this.pendingConfirm = kind;
    setText(this.confirmText, words.text);
    setText(this.confirmYes, words.yes);
    setText(this.confirmNo, words.no);
    this.confirm.dataset.confirm = kind;
    this.confirm.hidden = false;
    this.confirmNo.focus(); // the safe answer first: Enter twice must not destroy anything
  }

  closeConfirm(refocus) {
    const kind = this.pendingConfirm;
    this.pendingConfirm = null;
    this.confirm.hidden = true;
    if (refocus && kind && !this.actions[kind].hidden) this.actions[kind].focus();
  }

  async confirmed() {
    const kind = this.pendingConfirm;
    this.closeConfirm(false);
    this.showMessage("");
    const button = this.actions[kind];
    button.disabled = true;
    try {
      if (kind === "cancel") await this.app.commands.cancel(this.id);
      else if (kind === "delete") await this.app.commands.remove(this.id);
    } catch (error) {
      this.showMessage(`Could not ${kind} the job: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async rerun() {
    this.showMessage("");
    this.actions.rerun.disabled = true;
    try {
      const id = await this.app.commands.rerun(this.id);
      this.app.list.open(id, { push: true });
    } catch (error) {
      this.showMessage(`Could not rerun the job: ${error.message}`);
    } finally {
      this.actions.rerun.disabled = false;
    }
  }

  remove() {
    this.visibility.disconnect();
    for (const sv of this.steps.values()) sv.close();
    this.el.remove();
  }
}
