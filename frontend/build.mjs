// Builds the tab's ES module into the Python package:
//   src/index.js (+ uPlot and its CSS) -> ../tb_bnstats/plugin/static/index.js
// Deterministic: same sources and pinned versions give the same bytes
// (`make frontend-check` rebuilds and fails on a diff).
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));

await esbuild.build({
  entryPoints: [path.join(here, "src/index.js")],
  outfile: path.join(here, "../tb_bnstats/plugin/static/index.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  charset: "utf8",
  loader: { ".css": "text" },
  banner: { js: "// tb_bnstats BN Convergence tab. Generated from frontend/src by frontend/build.mjs: do not edit." },
  logLevel: "warning",
});
