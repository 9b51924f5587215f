// TensorBoard's reload button, seen from a plugin iframe (TensorBoard 2.x
// "experimental" plugin API): the iframe sends "experimental.bootstrap" to its
// parent with a MessagePort; the host then sends JSON messages
// {type, id, payload, error, isReply} on that port, among them
// "experimental.DataReloaded" after each reload, and expects a reply with the
// same id and isReply: true.

export const DATA_RELOADED = "experimental.DataReloaded";

/** Calls onReload() whenever TensorBoard reloads its data. Returns a disposer. */
export function listenForReload(onReload, win = window) {
  if (!win.parent || win.parent === win || typeof MessageChannel === "undefined") return () => {};
  const channel = new MessageChannel();
  const port = channel.port1;
  port.onmessage = async (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (!msg || msg.isReply) return;
    let error = null;
    if (msg.type === DATA_RELOADED) {
      try {
        await onReload();
      } catch (e) {
        error = String(e && e.message ? e.message : e);
      }
    }
    port.postMessage(JSON.stringify({ type: msg.type, id: msg.id, payload: null, error, isReply: true }));
  };
  port.start();
  win.parent.postMessage("experimental.bootstrap", "*", [channel.port2]);
  return () => port.close();
}
