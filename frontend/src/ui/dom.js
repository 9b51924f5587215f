// DOM helpers: names coming from logs are only ever inserted as text.

/**
 * h("div", {class: "x", onclick: fn, dataset: {a: 1}}, "text", child)
 * Strings become text nodes; no HTML parsing anywhere.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = String(v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** ``parts`` as a file name, as the server names its CSV downloads (plugin/http.py safe_name, joined by "_"). */
export function fileName(parts) {
  return parts.map((p) => String(p).replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "") || "data").join("_");
}

/** Download links (CSV and JSON) for a route with its parameters, saved as ``fileName(nameParts)``. */
export function downloads(routeUrl, route, params, nameParts) {
  const name = fileName(nameParts);
  return h("span", { class: "bn-dl" },
    h("a", { href: routeUrl(route, { ...params, format: "csv" }), download: `${name}.csv`, title: "Download what this chart shows as CSV" }, "CSV"),
    h("a", { href: routeUrl(route, params), download: `${name}.json`, title: "Download what this chart shows as JSON" }, "JSON"));
}

/** A titled card. */
export function card(title, sub, extra, ...body) {
  return h("section", { class: "bn-card" }, h("h3", null, title, sub ? h("span", { class: "bn-sub" }, sub) : null, extra), ...body);
}
