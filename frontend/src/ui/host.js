// TensorBoard's page around the tab's iframe. TensorBoard serves the iframe
// itself (same origin), so the tab can read that page's theme (theme.js) and
// URL (urlstate.js); opened on its own, or under another origin, there is none.

/** The host page's window, or null (no parent, or one the tab may not read). */
export function hostPage(win = window) {
  try {
    if (!win.parent || win.parent === win) return null;
    void win.parent.document; // throws across origins
    return win.parent;
  } catch (e) {
    return null;
  }
}
