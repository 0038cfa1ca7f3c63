// The connection indicator: live, reconnecting or stale, and the highest seq applied.

import { setAttr, setText } from "./dom.js";
import { clock } from "./time.js";

export function renderConnection(el, connection, seq) {
  setAttr(el, "data-connection", connection.state);
  setAttr(el, "data-seq", String(seq));
  const text = { live: "live", reconnecting: "reconnecting…", stale: `stale since ${clock(connection.lostAt)}` };
  setText(el.querySelector(".connection-text"), text[connection.state]);
  setText(el.querySelector(".connection-seq"), `seq ${seq}`);
}
