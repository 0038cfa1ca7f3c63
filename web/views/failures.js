// Why a job or step failed, in words: its failed children grouped by error (the server groups
// them: `GET api/jobs/{id}/failures`). Each group shows its error line and how many children;
// its button opens those children (their tracebacks a click further).

import { api, enc, jobPath } from "../api.js";
import { setAttr, setText } from "./dom.js";

const REFRESH_MS = 2000; // at most one request per this while the failed count moves

export class FailuresView {
  /** `root`: the `.failures` element; `step`: a step name, or null for the whole job;
   *  `onPick(group)`: a group's button was pressed. */
  constructor(app, managerId, step, root, onPick) {
    this.app = app;
    this.managerId = managerId;
    this.step = step;
    this.root = root;
    this.list = root.querySelector(".failure-groups");
    this.note = root.querySelector(".failures-note");
    this.onPick = onPick;
    this.wanted = 0; // the failed count the groups should reflect
    this.shownFor = -1; // the failed count the groups shown were read at
    this.busy = false;
    this.timer = 0;
    this.active = false;
  }

  /** Whether the view is on screen (it reads only then). */
  setActive(active) {
    this.active = active;
    if (active) this.refresh();
  }

  /** The job's or step's latest failed count. */
  setFailed(failed) {
    this.wanted = failed;
    this.root.hidden = failed === 0;
    if (this.active) this.refresh();
  }

  refresh() {
    if (!this.active || this.wanted === 0 || this.wanted === this.shownFor || this.busy || this.timer) return;
    this.busy = true;
    const asked = this.wanted;
    const query = this.step ? `?step=${enc(this.step)}` : "";
    api(`${jobPath(this.managerId)}/failures${query}`)
      .then((answer) => {
        this.shownFor = asked;
        this.render(answer);
      })
      .catch((error) => setText(this.note, `could not read the failures: ${error.message}`))
      .finally(() => {
        this.busy = false;
        this.timer = setTimeout(() => {
          this.timer = 0;
          this.refresh();
        }, REFRESH_MS);
      });
  }

  render(answer) {
    const items = answer.groups.map((group) => this.groupElement(group));
    this.list.replaceChildren(...items);
    const groups = answer.groups.length;
    setText(this.note, groups > 1 ? `${answer.failed.toLocaleString("en-US")} failed children, ${groups} causes` : "");
  }

  groupElement(group) {
    const li = document.createElement("li");
    li.className = "failure-group";
    setAttr(li, "data-failure-group", group.error);
    setAttr(li, "data-count", String(group.count));
    const error = document.createElement("span");
    error.className = "failure-error";
    error.textContent = group.error; // text only: errors quote job data
    error.title = `for example: ${group.example}`;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "failure-count link";
    const where = this.step ? "" : ` in ${group.step}`;
    const text = `${group.count.toLocaleString("en-US")} ${group.count === 1 ? "child" : "children"}${where}`;
    button.textContent = text;
    button.setAttribute("aria-label", `${text} failed with ${group.error}`); // starts with what it shows
    button.addEventListener("click", () => this.onPick(group));
    li.append(error, " ", button);
    return li;
  }
}
