import { test } from "node:test";
import assert from "node:assert/strict";
import { listenForReload, DATA_RELOADED } from "../src/ui/reload.js";

test("bootstraps a port with the host and answers DataReloaded after reloading", async () => {
  let hostPort = null;
  const parent = {
    postMessage(data, origin, ports) {
      assert.equal(data, "experimental.bootstrap");
      hostPort = ports[0];
    },
  };
  let reloads = 0;
  const stop = listenForReload(async () => { reloads++; }, { parent });
  assert.ok(hostPort, "a port was handed to the host");
  const reply = new Promise((resolve) => {
    hostPort.onmessage = (e) => resolve(JSON.parse(e.data));
  });
  hostPort.postMessage(JSON.stringify({ type: DATA_RELOADED, id: 7, payload: null, error: null, isReply: false }));
  const msg = await reply;
  assert.deepEqual(msg, { type: DATA_RELOADED, id: 7, payload: null, error: null, isReply: true });
  assert.equal(reloads, 1);
  stop();
  hostPort.close();
});

test("does nothing outside an iframe", () => {
  const win = {};
  win.parent = win;
  const stop = listenForReload(() => assert.fail("no reload"), win);
  stop();
});
