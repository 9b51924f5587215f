// The run selector's filter (pure): a regular expression matched anywhere in
// the run name, case-insensitive, as TensorBoard's own runs filter.

/**
 * The matcher of ``text``: {matches(name), error}. Empty text matches every
 * run; text that is not a valid regular expression matches every run and says
 * why in ``error`` (the selector marks the field; nothing is hidden).
 */
export function runMatcher(text) {
  const pattern = (text || "").trim();
  if (!pattern) return { matches: () => true, error: null };
  try {
    const re = new RegExp(pattern, "i");
    return { matches: (name) => re.test(name), error: null };
  } catch (e) {
    return { matches: () => true, error: `not a regular expression: ${e.message}` };
  }
}
