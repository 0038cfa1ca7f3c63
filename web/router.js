// The page's URL: `?job=<id>` names the job shown expanded; history entries follow it.

export function jobInUrl() {
  return new URLSearchParams(location.search).get("job") || null;
}

/** Put job `id` (or none) in the URL, as a new history entry unless `replace`. Other query
 *  parameters and the path (the app's mount point) stay as they are. */
export function go(id, { replace = false } = {}) {
  if (jobInUrl() === id) return;
  const params = new URLSearchParams(location.search);
  if (id) params.set("job", id);
  else params.delete("job");
  const search = params.toString();
  const url = `${location.pathname}${search ? `?${search}` : ""}${location.hash}`;
  if (replace) history.replaceState({ job: id }, "", url);
  else history.pushState({ job: id }, "", url);
}
