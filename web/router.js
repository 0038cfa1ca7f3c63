// The page's URL: what a reader sees is in it, so a link shares it, a reload keeps it and back and
// forward walk through it. `?job=<id>` names the job shown expanded; `q`, `status` and
// `definition` are the list's filters. Other query parameters and the path (the app's mount
// point) stay as they are.

export const FILTER_KEYS = ["q", "status", "definition"];

/** The URL's state: `{job, q, status, definition}` (absent values are null or ""). */
export function readUrl() {
  const params = new URLSearchParams(location.search);
  const state = { job: params.get("job") || null };
  for (const key of FILTER_KEYS) state[key] = (params.get(key) || "").trim();
  return state;
}

export function jobInUrl() {
  return readUrl().job;
}

/** Change some of the URL's values (`{job, q, status, definition}`; empty removes one) as a new
 *  history entry, unless `replace`. `kind` names what changed: successive search edits share one
 *  entry, so back does not replay every keystroke. */
export function go(changes, { replace = false, kind = "" } = {}) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    if (value) params.set(key, value);
    else params.delete(key);
  }
  const search = params.toString();
  if (`?${search}` === location.search || (!search && !location.search)) return;
  const url = `${location.pathname}${search ? `?${search}` : ""}${location.hash}`;
  const state = { kind };
  if (replace || (kind && kind === "search" && history.state?.kind === "search")) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
}
