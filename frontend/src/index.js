// The BN Convergence tab: TensorBoard imports this module in the plugin's
// iframe and calls render(). This file owns the App: the UI state (view, run,
// layer, smoothing...), the bar, the run chips and the banners, and it hands
// the main area to one view at a time.
//   model/   talking to the server (api.js) and pure data shaping, no DOM
//   charts/  uPlot charts, sparklines and every colour (colors.js)
//   ui/      DOM building (dom.js); TensorBoard's page around the tab (host.js): its reload button
//            (reload.js), theme (theme.js) and URL (urlstate.js)
//   views/   overview, layer detail (+ per channel, findings), compare runs
import uplotCss from "uplot/dist/uPlot.min.css";
import css from "./style.css";
import { api, routeUrl } from "./model/api.js";
import { h } from "./ui/dom.js";
import { runColor } from "./charts/colors.js";
import { orderProblems, problemsHeadline } from "./model/fileproblems.js";
import { worstRun } from "./model/findings.js";
import { runMatcher } from "./model/runfilter.js";
import { listenForReload } from "./ui/reload.js";
import { followTheme } from "./ui/theme.js";
import { readUrlState, writeUrlState } from "./ui/urlstate.js";
import { renderOverview } from "./views/overview.js";
import { renderLayer } from "./views/layer.js";
import { renderCompare } from "./views/compare.js";

const VIEWS = { overview: renderOverview, layer: renderLayer, compare: renderCompare };
const MAX_FILE_PROBLEMS_LISTED = 8;

class App {
  constructor(root) {
    this.root = root;
    this.state = { view: "overview", run: null, layer: null, compareRuns: [], smoothing: 0, logScale: false, filter: "", runFilter: "", layerSort: { key: "depth", reversed: false }, compareQuantity: "mean_gap/max", measure: "mean_gap/max", channelStep: null };
    this.runs = [];
    this.meta = null;
    this.cleanup = null;
    this.disposers = [];
    this.token = 0;
    this.samplings = new Map();
    this.zooms = new Map(); // view key -> {range}: the zoom each view's charts come back to (SyncGroup)
    this.routeUrl = routeUrl;
    this.api = api;
    this.build();
  }

  build() {
    this.tabs = h("div", { class: "bn-tabs", role: "tablist" },
      ...[["overview", "Overview"], ["layer", "Layer detail"], ["compare", "Compare runs"]].map(([id, label]) =>
        h("button", { role: "tab", dataset: { view: id }, onclick: () => this.go(id) }, label)));
    this.smoothOut = h("output", null, "0");
    const smooth = h("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", title: "Smoothing (exponential moving average, debiased like TensorBoard's scalars)",
      oninput: (e) => { this.smoothOut.textContent = e.target.value; },
      onchange: (e) => { this.state.smoothing = Number(e.target.value); this.show(); } });
    const log = h("input", { type: "checkbox", onchange: (e) => { this.state.logScale = e.target.checked; this.show(); } });
    this.filterInput = h("input", { type: "search", placeholder: "layer filter", oninput: (e) => { this.state.filter = e.target.value; this.onFilter && this.onFilter(); } });
    this.runFilterInput = h("input", { type: "search", placeholder: "filter runs (regex)", dataset: { role: "run-filter" },
      oninput: (e) => { this.state.runFilter = e.target.value; this.applyRunFilter(); } });
    this.runCount = h("span", { class: "bn-hint", dataset: { role: "run-count" } });
    this.banner = h("div", { class: "bn-banner", hidden: true, dataset: { role: "sampling" } });
    this.fileBanner = h("div", { class: "bn-banner", hidden: true, dataset: { role: "file-problems" } });
    this.formatBanner = h("div", { class: "bn-banner", hidden: true, dataset: { role: "newer-format" } });
    this.error = h("div", { class: "bn-error", hidden: true });
    this.runBar = h("div", { class: "bn-runs" });
    this.view = h("main", { class: "bn-view" });
    this.root.append(
      h("div", { class: "bn-bar" }, this.tabs,
        h("label", null, "Smoothing", smooth, this.smoothOut),
        h("label", null, log, "log scale (variance)"),
        h("label", null, "Layers", this.filterInput),
        h("label", null, "Runs", this.runFilterInput, this.runCount)),
      this.runBar, this.formatBanner, this.fileBanner, this.banner, this.error, this.view);
  }

  runIndex(name) {
    return this.runs.findIndex((r) => r.run === name);
  }

  color(name) {
    return runColor(Math.max(this.runIndex(name), 0));
  }

  runInfo(name) {
    return this.runs.find((r) => r.run === name) || null;
  }

  async load() {
    this.setError(null);
    try {
      this.meta = await api.runs();
    } catch (e) {
      this.setError(`Could not list runs: ${e.message}`);
      return;
    }
    this.runs = this.meta.runs;
    const names = this.runs.map((r) => r.run);
    if (!names.includes(this.state.run)) this.state.run = worstRun(this.runs);
    this.state.compareRuns = this.state.compareRuns.filter((r) => names.includes(r));
    if (!this.state.compareRuns.length) this.state.compareRuns = names.slice(0, 4);
    const info = this.runInfo(this.state.run);
    if (info && !info.layers.some((l) => l.name === this.state.layer)) this.state.layer = info.layers[0]?.name || null;
    await this.show();
  }

  /** The zoom memory of a view ("overview|run", "layer|run|layer", ...): kept across its redraws. */
  zoomMemory(...key) {
    const k = key.join("|");
    if (!this.zooms.has(k)) this.zooms.set(k, { range: null });
    return this.zooms.get(k);
  }

  /** The state the URL holds (ui/urlstate.js): a reload or a shared link opens the same view. */
  fromUrl(url) {
    if (url.view in VIEWS) this.state.view = url.view;
    if (url.run !== undefined) this.state.run = url.run;
    if (url.layer !== undefined) this.state.layer = url.layer;
    if (url.step !== undefined && /^\d+$/.test(url.step)) this.state.channelStep = Number(url.step);
  }

  saveUrl() {
    const s = this.state;
    writeUrlState({ run: s.run, view: s.view, layer: s.view === "overview" ? null : s.layer,
      step: s.view === "layer" ? s.channelStep : null });
  }

  go(view, patch) {
    Object.assign(this.state, patch || {}, { view });
    this.show();
  }

  renderRunBar() {
    const multi = this.state.view === "compare";
    const chosen = multi ? new Set(this.state.compareRuns) : new Set([this.state.run]);
    this.runBar.replaceChildren(h("span", { class: "bn-hint" }, multi ? "Runs to compare:" : "Run:"),
      ...this.runs.map((r) => h("button", {
        class: "bn-chip", "aria-pressed": chosen.has(r.run) ? "true" : "false", dataset: { run: r.run }, title: r.run,
        onclick: () => {
          if (multi) {
            const set = new Set(this.state.compareRuns);
            if (set.has(r.run)) set.delete(r.run);
            else set.add(r.run);
            this.state.compareRuns = this.runs.map((x) => x.run).filter((x) => set.has(x));
          } else {
            this.state.run = r.run;
            const info = this.runInfo(r.run);
            if (!info.layers.some((l) => l.name === this.state.layer)) this.state.layer = info.layers[0]?.name || null;
            this.state.channelStep = null;
          }
          this.show();
        },
      }, h("span", { class: "bn-swatch", style: { background: this.color(r.run) } }), h("span", { dataset: { role: "run-name" } }, r.run),
      r.severity ? h("span", { class: `bn-chip-sev sev-${r.severity}`, dataset: { severity: r.severity } }, r.severity) : null)));
    this.applyRunFilter();
  }

  /** Hides the run chips the run filter (a regex, as TensorBoard's) does not match; says how many are shown. */
  applyRunFilter() {
    const { matches, error } = runMatcher(this.state.runFilter);
    let shown = 0;
    for (const chip of this.runBar.querySelectorAll(".bn-chip")) {
      chip.hidden = !matches(chip.dataset.run);
      shown += chip.hidden ? 0 : 1;
    }
    this.runFilterInput.classList.toggle("invalid", Boolean(error));
    this.runFilterInput.title = error || "a regular expression matched anywhere in the run name, case-insensitive";
    this.runCount.textContent = this.state.runFilter.trim() && !error ? `${shown} of ${this.runs.length}` : "";
  }

  /** A run's worst severity as its /findings gave it: the chip shows it. */
  noteSeverity(run, severity) {
    const info = this.runInfo(run);
    if (!info || !severity || info.severity === severity) return;
    info.severity = severity;
    this.renderRunBar();
  }

  /** Shows or clears the "TensorBoard sampled these series" banner. */
  noteSampling(key, sampling) {
    if (sampling && sampling.sampled) this.samplings.set(key, sampling);
    else this.samplings.delete(key);
    const s = [...this.samplings.values()][0];
    if (!s) {
      this.banner.hidden = true;
      return;
    }
    this.banner.hidden = false;
    const [before, ...after] = s.message.split(s.hint);
    this.banner.replaceChildren(h("b", null, "Sampled data. "), before, h("code", null, s.hint), after.join(s.hint));
  }

  /** Shows or clears the "damaged event files" banner (/runs' file_problems):
   * the tab shows what comes before the damage and says what it cannot read. */
  noteFileProblems() {
    const problems = orderProblems(this.meta && this.meta.file_problems, this.state.run);
    this.fileBanner.hidden = !problems.length;
    if (!problems.length) {
      this.fileBanner.replaceChildren();
      return;
    }
    const listed = problems.slice(0, MAX_FILE_PROBLEMS_LISTED);
    const more = problems.length - listed.length;
    this.fileBanner.replaceChildren(
      h("b", null, `${problemsHeadline(problems.length)}. `),
      "What they hold before the damage is shown; the rest is not.",
      h("ul", null, ...listed.map((p) => h("li", { dataset: { run: String(p.run), kind: String(p.kind) } }, String(p.message)))),
      ...(more > 0 ? [h("div", { class: "bn-note" }, `and ${more} more (all of them are in TensorBoard's log)`)] : []));
  }

  /** Shows or clears the "newer log format" banner (/runs' newer_format):
   * such runs are shown as far as this version of the plugin reads them. */
  noteNewerFormat() {
    const newer = this.meta && this.meta.newer_format;
    this.formatBanner.hidden = !newer;
    this.formatBanner.replaceChildren(...(newer ? [h("b", null, "Newer log format. "), String(newer.message),
      " Runs: ", (newer.runs || []).join(", ")] : []));
  }

  setError(msg) {
    this.error.hidden = !msg;
    this.error.textContent = msg || "";
  }

  /** Runs fn when the current view goes away (charts drawn before the view returned). */
  onCleanup(fn) {
    this.disposers.push(fn);
  }

  /** Marks (once per page) when the first chart with data was drawn. */
  markFirstChart() {
    if (!performance.getEntriesByName("bn-first-chart").length) performance.mark("bn-first-chart");
  }

  alive(token) {
    return token === this.token;
  }

  async show() {
    const token = ++this.token;
    for (const fn of [this.cleanup, ...this.disposers]) {
      try { if (fn) fn(); } catch (e) { /* a chart already gone */ }
    }
    this.cleanup = null;
    this.disposers = [];
    this.onFilter = null;
    this.samplings.clear();
    this.noteSampling(null, null);
    this.noteFileProblems();
    this.noteNewerFormat();
    this.setError(null);
    for (const b of this.tabs.children) b.setAttribute("aria-selected", String(b.dataset.view === this.state.view));
    this.renderRunBar();
    this.saveUrl();
    this.view.replaceChildren();
    document.body.dataset.view = this.state.view;
    if (!this.runs.length) {
      this.view.append(h("div", { class: "bn-empty" },
        "No BatchNormalization statistics found. Log a run with tb_bnstats.BNStatsCallback(log_dir) and reload."));
      return;
    }
    const started = performance.now();
    try {
      this.cleanup = await VIEWS[this.state.view](this.view, this, token);
      if (this.alive(token)) {
        this.markFirstChart();
        document.body.dataset.drawnMs = String(Math.round(performance.now() - started)); // for benchmarks, not shown
        document.body.dataset.ready = String(token);
      }
    } catch (e) {
      if (this.alive(token)) this.setError(e.message || String(e));
    }
  }
}

let app = null;

function injectStyles() {
  for (const text of [uplotCss, css]) {
    const style = document.createElement("style");
    style.textContent = text;
    document.head.appendChild(style);
  }
}

export async function render() {
  injectStyles();
  const root = h("div", { class: "bn-app" });
  document.body.appendChild(root);
  app = new App(root);
  window.__bnApp = app; // for tests and the bench
  listenForReload(() => app.load()); // TensorBoard's reload button (no polling)
  followTheme(() => app.show()); // TensorBoard's theme menu (or the browser's preference): redraw in its colours
  app.fromUrl(readUrlState()); // a run the URL names is opened instead of the worst one
  await app.load();
}
