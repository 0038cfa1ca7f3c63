// stepstream's page: wiring. One store fed by the stream and the API; views render from it at
// most once per animation frame.
//
// Data flows one way: stream event / API answer -> store (seq-guarded) -> dirty marks -> render.
// Every URL is relative to the page, so the app works mounted under any prefix.

import { Commands } from "./commands.js";
import { ChildStreams, Connection } from "./connection.js";
import * as router from "./router.js";
import { Store } from "./store.js";
import { renderConnection } from "./views/connection.js";
import { JobList } from "./views/list.js";
import { StartForm } from "./views/start.js";
import { StorageWatch } from "./views/storage.js";

const RECONCILE_MS = 10000;
const TICK_MS = 1000;

const store = new Store();
const redrawn = new Set(); // views with their own render() waiting for the next frame
let frame = 0;

const app = {
  store,
  router,
  commands: new Commands(store),
  logViews: new Map(), // step key -> LogView of each open log
  childrenViews: new Map(), // step key -> ChildrenView of each open children view
  redraw(view) {
    redrawn.add(view);
    schedule();
  },
  renderNow: render,
};

const connection = new Connection({
  onEvent: (type, data, lastEventId, at) => store.applyEvent(type, data, lastEventId, at),
  onBatch: () => app.commands.fetchMissing(),
  onState: () => {
    store.dirty.connection = true;
    schedule();
  },
  onReconnected: () => {
    app.commands.reconcile();
    app.childStreams.revive();
  },
  lastEventId: () => store.lastEventId,
});
app.childStreams = new ChildStreams({
  onChild: (data) => store.applyChild(data),
  onStarted: (managerId) => store.childStreamStarted(managerId),
  onBatch: () => {},
});
app.list = new JobList(app, document.querySelector(".jobs-section"));
const startForm = new StartForm(app, document.getElementById("start-form"));
store.listener = schedule;

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  cancelAnimationFrame(frame);
  frame = 0;
  const dirty = store.dirty;
  if (dirty.connection) {
    dirty.connection = false;
    renderConnection(document.getElementById("connection"), connection, store.seq);
  }
  if (dirty.order) {
    dirty.order = false;
    app.list.renderOrder();
  }
  for (const id of dirty.jobs) app.list.update(id);
  dirty.jobs.clear();
  for (const key of dirty.logs) {
    const view = app.logViews.get(key);
    if (!view) continue;
    view.takeRecords();
    redrawn.add(view);
  }
  dirty.logs.clear();
  for (const key of dirty.children) {
    const view = app.childrenViews.get(key);
    if (view) redrawn.add(view);
  }
  dirty.children.clear();
  for (const view of [...redrawn]) {
    redrawn.delete(view);
    view.render();
  }
  app.list.keepAnchor();
}

function tick() {
  app.list.tick();
  for (const view of app.childrenViews.values()) if (view.ticking) app.redraw(view);
}

async function loadDefinitions() {
  try {
    const definitions = await app.commands.definitions();
    startForm.setDefinitions(definitions);
    app.list.setDefinitions(definitions.map((d) => d.name));
  } catch (error) {
    startForm.showMessage(`Could not load the job definitions: ${error.message}`);
  }
}

function main() {
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    if (connection.closed) connection.connect(); // skip the backoff wait
    app.commands.reconcile();
  });
  setInterval(() => {
    if (document.visibilityState === "visible") app.commands.reconcile();
  }, RECONCILE_MS);
  setInterval(tick, TICK_MS);
  window.addEventListener("popstate", () => app.list.followUrl(router.readUrl()));
  connection.setState("reconnecting");
  new StorageWatch(document.getElementById("storage"), (workers) => { store.workers = workers; }).start();
  loadDefinitions();
  app.commands.syncClock().catch(() => {}); // the stream's snapshot carries the time too
  const linked = router.jobInUrl();
  if (linked) app.list.open(linked, { push: false });
  connection.connect();
}

// For the console and for tests: the page's state, read-only by convention.
window.stepstream = { store, app };

main();
