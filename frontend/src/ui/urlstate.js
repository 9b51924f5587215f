// The tab's place in TensorBoard's URL: run, view, layer and snapshot step as
// "p.bn_stats.<key>" entries of the host page's URL hash
// ("#bn_stats&p.bn_stats.run=...": TensorBoard's own format and prefix for
// plugin URL data, which it hands to plugins as "experimental.GetURLPluginData"),
// so a reload or a shared link opens the same view. The iframe is served by
// TensorBoard (same origin): the hash is read from and written to the host page
// directly, replacing the history entry rather than adding one per click.
// (TensorBoard's tf_storage.getUrlHashDict() is not used: after a reload it
// answers a dictionary cached before the hash was read.) Opened on its own,
// the tab has no URL state.

import { hostPage } from "./host.js";

const PREFIX = "p.bn_stats.";
export const URL_KEYS = ["run", "view", "layer", "step"];

/** "tab&k=v&..." as [["", "tab"], [k, v], ...] (values decoded). */
export function parseHash(hash) {
  return hash.replace(/^#/, "").split("&").filter((part) => part !== "").map((part) => {
    const i = part.indexOf("=");
    return i < 0 ? ["", decodeURIComponent(part)] : [decodeURIComponent(part.slice(0, i)), decodeURIComponent(part.slice(i + 1))];
  });
}

/** The inverse of parseHash, with "#". */
export function formatHash(entries) {
  return "#" + entries.map(([k, v]) => (k === "" ? encodeURIComponent(v) : `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)).join("&");
}

/** ``hash`` with the tab's keys set from ``state`` (null, undefined or "": removed); other entries kept in order. */
export function withState(hash, state) {
  const entries = parseHash(hash).filter(([k]) => !URL_KEYS.some((key) => k === PREFIX + key));
  for (const key of URL_KEYS) {
    const value = state[key];
    if (value !== null && value !== undefined && value !== "") entries.push([PREFIX + key, String(value)]);
  }
  return formatHash(entries);
}

/** {run, view, layer, step} (strings) of ``hash``; absent keys left out. */
export function stateOf(hash) {
  const out = {};
  for (const [k, v] of parseHash(hash)) {
    const key = k.startsWith(PREFIX) ? k.slice(PREFIX.length) : null;
    if (URL_KEYS.includes(key) && v !== "") out[key] = v;
  }
  return out;
}

/** The state the host page's URL holds. */
export function readUrlState(win = window) {
  const page = hostPage(win);
  return page ? stateOf(page.location.hash) : {};
}

/** Writes ``state`` into the host page's URL (history entry replaced). */
export function writeUrlState(state, win = window) {
  const page = hostPage(win);
  if (!page) return;
  const next = withState(page.location.hash, state);
  if (next !== (page.location.hash || "#")) page.history.replaceState(page.history.state, "", next);
}
