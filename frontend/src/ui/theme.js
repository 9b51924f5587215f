// TensorBoard's theme, seen from the plugin iframe: TensorBoard 2.x puts the
// class "dark-mode" on its own <body> when its theme menu (Settings: "Browser
// default" / "Light" / "Dark") makes the page dark. The tab's iframe is served
// by TensorBoard itself (same origin), so it reads that class and follows its
// changes; opened on its own (no readable parent) it follows the browser's
// prefers-color-scheme. The tab's colours are the CSS variables of :root,
// dark under :root.dark (style.css).

import { hostPage } from "./host.js";

/** Whether the page around the tab is dark: TensorBoard's body class, else the browser's preference. */
export function isDark(win = window) {
  const host = hostBody(win);
  if (host) return host.classList.contains("dark-mode");
  return Boolean(win.matchMedia && win.matchMedia("(prefers-color-scheme: dark)").matches);
}

function hostBody(win) {
  const page = hostPage(win);
  return page ? page.document.body : null;
}

/**
 * Sets :root's "dark" class from isDark() now and whenever TensorBoard's theme
 * or the browser's preference changes; onChange() after each change (the
 * charts read their colours when drawn). Returns a disposer.
 */
export function followTheme(onChange, win = window) {
  const root = win.document.documentElement;
  const apply = () => {
    const dark = isDark(win);
    if (root.classList.contains("dark") === dark) return;
    root.classList.toggle("dark", dark);
    onChange();
  };
  root.classList.toggle("dark", isDark(win));
  const host = hostBody(win);
  const observer = host && typeof MutationObserver !== "undefined" ? new MutationObserver(apply) : null;
  if (observer) observer.observe(host, { attributes: true, attributeFilter: ["class"] });
  const mq = win.matchMedia ? win.matchMedia("(prefers-color-scheme: dark)") : null;
  if (mq && mq.addEventListener) mq.addEventListener("change", apply);
  return () => {
    if (observer) observer.disconnect();
    if (mq && mq.removeEventListener) mq.removeEventListener("change", apply);
  };
}
