// The only module that talks to the server: one function per plugin route.
// Urls are RELATIVE: the iframe has <base href="plugin/bn_stats/">, so "runs"
// is data/plugin/bn_stats/runs, also under --path_prefix.
import { query } from "./format.js";

class ApiError extends Error {}

/** The url of a route (for fetch and for download links). */
export function routeUrl(route, params) {
  return `${route}${query(params)}`;
}

/** GET a JSON route; throws ApiError with the server's reason on a non-2xx. */
async function getJson(route, params) {
  const res = await fetch(routeUrl(route, params), { credentials: "same-origin" });
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    throw new ApiError(`${route}: HTTP ${res.status}, not JSON`);
  }
  if (!res.ok) throw new ApiError(body && body.error ? body.error : `${route}: HTTP ${res.status}`);
  return body;
}

export const api = {
  runs: () => getJson("runs"),
  overview: (run) => getJson("overview", { run }),
  heatmap: (run, measure, bins) => getJson("heatmap", { run, measure, bins }),
  series: (run, layer, quantities, points) => getJson("series", { run, layer, quantities: quantities.join(","), points }),
  snapshot: (run, layer, step) => getJson("snapshot", { run, layer, step }),
  bands: (run, layer) => getJson("bands", { run, layer }),
  replicas: (run, layer, step) => getJson("replicas", { run, layer, step }),
  loss: (run, points) => getJson("loss", { run, points }),
  findings: (run) => getJson("findings", { run }),
  compare: (runs, layer, quantity, points) => getJson("compare", { run: runs, layer, quantity, points }),
};
