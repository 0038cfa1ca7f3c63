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

/** Seconds left for a running step at the rate its children have finished so far; null while
 *  there is no estimate (nothing finished yet, or nothing left). */
export function etaSeconds(step, now) {
  if (step.status !== "running" || !step.started_at) return null;
  const p = step.progress;
  const done = p.completed + p.failed + p.cancelled;
  const remaining = p.pending + p.running;
  const elapsed = (now - Date.parse(step.started_at)) / 1000;
  if (done === 0 || remaining === 0 || elapsed <= 0) return null;
  return (remaining * elapsed) / done;
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
