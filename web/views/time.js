// Times shown on the page. `now` is the server's clock (Store.now), so elapsed times and
// estimates stay right when the browser's clock is off.

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** HH:MM:SS in local time (by hand: toLocaleTimeString costs ~50x more, per log line). */
export function clock(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${clock(d)}.${pad(d.getMilliseconds(), 3)}`;
}

/** Seconds a job or step has run: until it finished, or until `now` while it runs; null if it
 *  never started. */
export function elapsedSeconds(item, now) {
  if (!item.started_at) return null;
  const end = item.finished_at ? Date.parse(item.finished_at) : now;
  return Math.max(0, (end - Date.parse(item.started_at)) / 1000);
}

const WINDOW_MS = 30000; // the recent past that rates are measured over
const GROWING_MS = 4000; // a step whose total rose this recently is still discovering work
const MIN_SPAN_MS = 3000; // a recent rate needs samples at least this far apart

/** A running step's pace, from the counts the page saw over the last half minute: whether it is
 *  still finding work (its total rose lately: no estimate can be known), its spawn and finish
 *  rates, and the time left at the recent finish rate. */
export class Pace {
  constructor() {
    this.samples = []; // {t, done, total}, ascending t (server time)
    this.grewAt = -Infinity;
  }

  /** The step's counts as of server time `now`. */
  see(progress, now) {
    const done = progress.completed + progress.failed + progress.cancelled;
    const last = this.samples[this.samples.length - 1];
    if (last && progress.total > last.total) this.grewAt = now;
    if (last && last.done === done && last.total === progress.total) return;
    this.samples.push({ t: now, done, total: progress.total });
    while (this.samples.length > 2 && this.samples[1].t < now - WINDOW_MS) this.samples.shift();
  }

  growing(now) {
    return now - this.grewAt < GROWING_MS;
  }

  /** Per second over the recent window: `{done, found}`, or null without enough history. */
  rates(now) {
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    if (!first || now - first.t < MIN_SPAN_MS) return null;
    const span = (now - first.t) / 1000;
    return { done: (last.done - first.done) / span, found: (last.total - first.total) / span };
  }
}

/** Seconds left for a running step that has stopped finding work: at its recent finish rate
 *  when the page has watched it long enough, else at its rate since it started; null while
 *  there is no estimate (still discovering, nothing finished yet, or nothing left). */
export function etaSeconds(step, now, pace) {
  if (step.status !== "running" || !step.started_at) return null;
  if (pace && pace.growing(now)) return null;
  const p = step.progress;
  const done = p.completed + p.failed + p.cancelled;
  const remaining = p.pending + p.running;
  const elapsed = (now - Date.parse(step.started_at)) / 1000;
  if (done === 0 || remaining === 0 || elapsed <= 0) return null;
  const recent = pace && pace.rates(now);
  if (recent && recent.done > 0) return remaining / recent.done;
  return (remaining * elapsed) / done;
}

/** A rate for people: 85/s, 4.2/s, 12/min. */
export function rate(perSecond) {
  if (perSecond >= 10) return `${Math.round(perSecond).toLocaleString("en-US")}/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}/s`;
  return `${Math.round(perSecond * 60)}/min`;
}

/** A data attribute value for seconds: one decimal. */
export const secondsAttr = (s) => (s == null ? null : String(Math.round(s * 10) / 10));

/** 4.2s, 42s, 3m 05s, 2h 03m, 1d 04h. */
export function duration(s) {
  if (s < 10) return `${s.toFixed(1)}s`;
  const whole = Math.round(s);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${pad(whole % 60)}s`;
  if (whole < 86400) return `${Math.floor(whole / 3600)}h ${pad(Math.floor(whole / 60) % 60)}m`;
  return `${Math.floor(whole / 86400)}d ${pad(Math.floor(whole / 3600) % 24)}h`;
}

/** How long ago, for people: "just now", "42 s ago", "3 min ago", "2 h ago", "3 d ago". */
export function ago(iso, now) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 10) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A date and time in full, local: 2026-01-02 14:03:05. */
export function exactTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
}
