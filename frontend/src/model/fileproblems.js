// Damaged event files (the `file_problems` of /runs): pure helpers; the
// banner itself is drawn by index.js.

/** The problems of `run` first (the run shown), then the others; each once. */
export function orderProblems(problems, run) {
  const list = Array.isArray(problems) ? problems.filter((p) => p && typeof p === "object") : [];
  return [...list.filter((p) => p.run === run), ...list.filter((p) => p.run !== run)];
}

/** "1 event file could not be read completely" / "3 event files ..." */
export function problemsHeadline(n) {
  return `${n} event file${n === 1 ? "" : "s"} could not be read completely`;
}
