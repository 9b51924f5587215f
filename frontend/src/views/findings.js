// The diagnosis findings of a run: a banner ("2 errors, 1 warning" or
// "No findings") and a list. Clicking a finding, or a layer named in it,
// opens that layer's detail. Everything from the logs is inserted as text.
import { h } from "../ui/dom.js";
import { findingsSummary, messageOf, worstSeverity } from "../model/findings.js";

const SOURCE_NOTE = {
  // Framework-neutral: BNStatsCallback stores them at the end of its last fit, BNStatsMonitor at close().
  stored: "stored in the logs when training ended",
  computed: "computed now from the logged quantities",
  "stored+computed": "stored in the logs when training ended, plus those computed now from the logged quantities",
};

// A finding over many layers shows this many layer links, the rest folded under "+N more".
const LAYERS_SHOWN = 6;

/** The layer links of a finding: all of them for a few layers; else "N layers:", the first few and the rest folded. */
function layerLinks(layers, open) {
  const link = (name) => h("button", { class: "bn-layer-link", dataset: { layer: name }, title: `Open ${name}`, onclick: open(name) }, name);
  if (layers.length <= LAYERS_SHOWN) return h("span", { class: "bn-finding-layers" }, ...layers.map(link));
  const rest = layers.slice(LAYERS_SHOWN - 1);
  return h("span", { class: "bn-finding-layers", dataset: { count: String(layers.length) } },
    h("span", { class: "bn-note" }, `${layers.length} layers:`), ...layers.slice(0, LAYERS_SHOWN - 1).map(link),
    h("details", { class: "bn-more-layers", onclick: (e) => e.stopPropagation() },
      h("summary", null, `+${rest.length} more`), ...rest.map(link)));
}

/** Renders a findings list (no banner): one item per finding; with `layer`, each says what it says about that layer. */
export function findingsList(findings, app, titles, layer) {
  return h("ul", { class: "bn-findings", dataset: { role: "findings-list" } },
    ...findings.map((f) => {
      const layers = Array.isArray(f.layers) ? f.layers : [];
      const open = (layer) => (e) => {
        if (e) e.stopPropagation();
        if (layer) app.go("layer", { layer, channelStep: null });
      };
      return h("li", {
        class: `bn-finding sev-${f.severity}`, dataset: { code: String(f.code), layer: layers[0] || "" },
        title: layers.length ? `Open ${layers[0]}` : null, onclick: open(layers[0]),
      },
      h("div", { class: "bn-finding-head" },
        h("span", { class: `bn-sev sev-${f.severity}` }, String(f.severity)),
        h("b", null, String(f.code)),
        h("span", { class: "bn-scenario" }, String(f.scenario || "")),
        titles && titles[f.code] ? h("span", { class: "bn-finding-title" }, titles[f.code]) : null,
        layerLinks(layers, open)),
      h("div", { class: "bn-finding-msg" }, String(messageOf(f, layer) || "")));
    }));
}

/** The banner plus the list, for the overview. */
export function findingsCard(body, app) {
  const level = worstSeverity(body.counts);
  const banner = h("div", { class: `bn-findings-banner sev-${level}`, dataset: { role: "findings-banner", level } },
    h("b", null, findingsSummary(body.counts)),
    h("span", { class: "bn-note" }, ` · diagnosis of run ${body.run}, ${SOURCE_NOTE[body.source] || body.source}` +
      (body.stored_step !== null && body.stored_step !== undefined && body.stored ? ` (step ${body.stored_step})` : "")));
  const wrap = h("div", { dataset: { role: "findings", run: String(body.run) } }, banner);
  if (body.findings.length) wrap.append(findingsList(body.findings, app, body.titles));
  return wrap;
}
