// contributor/static/js/worker-rpc.js: both engines' requests to their Web Worker, with the
// two sides joined by a MessageChannel (structured cloning and transfers as between a page
// and its worker): answers and errors reach the right request, progress and a request's own
// events reach their listeners, a worker failure and close() reject what is in flight.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { js } from "./helpers.mjs";

const { workerClient, workerServe } = await import(js("worker-rpc.js"));

const channels = [];
afterEach(() => {
  for (const c of channels.splice(0)) { c.port1.close(); c.port2.close(); }
});

/** A stand-in Worker on the page's side of a channel whose other end serves `handlers`. */
function connected(handlers) {
  const channel = new MessageChannel();
  channels.push(channel);
  workerServe(channel.port2, handlers);
  const worker = {
    posted: [],
    terminated: 0,
    postMessage(msg) { this.posted.push(msg); channel.port1.postMessage(msg); },
    terminate() { this.terminated++; channel.port1.close(); },
    set onmessage(fn) { channel.port1.onmessage = fn; },
    onerror: null,
  };
  return worker;
}

const never = () => new Promise(() => {});

describe("workerClient and workerServe", () => {
  test("each answer settles its own request, ids counting up", async () => {
    const worker = connected({
      echo: async ({ value }, id) => ({ value, id }),
      slow: async ({ ms }) => new Promise((resolve) => setTimeout(() => resolve(ms), ms)),
    });
    const { call } = workerClient(worker);
    const [slow, fast] = await Promise.all([call("slow", { ms: 30 }), call("echo", { value: "x" })]);
    assert.equal(slow, 30);
    assert.deepEqual(fast, { value: "x", id: 2 });
    assert.deepEqual(worker.posted.map((m) => [m.id, m.op]), [[1, "slow"], [2, "echo"]]);
  });

  test("a result's typed array is moved, not copied, and arrives whole", async () => {
    let sent = null;
    const worker = connected({
      pixels: () => {
        sent = Uint8Array.of(1, 2, 3);
        return { data: sent, height: 1, width: 1 };
      },
    });
    const result = await workerClient(worker).call("pixels");
    assert.deepEqual([...result.data], [1, 2, 3]);
    assert.equal(sent.byteLength, 0, "the worker's buffer was transferred");
  });

  test("a thrown error rejects with its message, code and the worker's stack", async () => {
    const worker = connected({
      refuse: () => { const err = new Error("image: not a PNG"); err.code = "bad_input"; throw err; },
      plain: () => { throw new Error("boom"); },
    });
    const { call } = workerClient(worker);
    await assert.rejects(call("refuse"), (err) => err.message === "image: not a PNG" && err.code === "bad_input" && /not a PNG/.test(err.workerStack));
    await assert.rejects(call("plain"), (err) => err.message === "boom" && err.code === undefined);
    await assert.rejects(call("missing"), /unknown op missing/);
    await assert.rejects(call("toString"), /unknown op toString/, "only the handlers' own ops");
  });

  test("progress goes to onProgress, a request's events to its own listener", async () => {
    const channel = new MessageChannel();
    channels.push(channel);
    workerServe(channel.port2, {
      generate: async ({ n }, id) => {
        channel.port2.postMessage({ type: "progress", progress: { phase: "load", done: 1, total: 1 } });
        for (let k = 1; k <= n; k++) channel.port2.postMessage({ type: "token", id, count: k });
        channel.port2.postMessage({ type: "token", id: 999, count: -1 }); // no such request
        return { tokens: n };
      },
    });
    const worker = { postMessage: (m) => channel.port1.postMessage(m), terminate() {}, set onmessage(fn) { channel.port1.onmessage = fn; } };
    const progress = [];
    const { call } = workerClient(worker, { onProgress: (p) => progress.push(p.phase) });
    const heard = [];
    const result = await call("generate", { n: 3 }, (msg) => heard.push([msg.type, msg.count]));
    assert.deepEqual(result, { tokens: 3 });
    assert.deepEqual(heard, [["token", 1], ["token", 2], ["token", 3]]);
    assert.deepEqual(progress, ["load"]);
  });

  test("a listener that throws does not stop the request", async () => {
    const channel = new MessageChannel();
    channels.push(channel);
    workerServe(channel.port2, {
      go: async (_args, id) => { channel.port2.postMessage({ type: "token", id }); return "done"; },
    });
    const worker = { postMessage: (m) => channel.port1.postMessage(m), terminate() {}, set onmessage(fn) { channel.port1.onmessage = fn; } };
    const quiet = console.error;
    console.error = () => {};
    try {
      assert.equal(await workerClient(worker).call("go", {}, () => { throw new Error("listener"); }), "done");
    } finally {
      console.error = quiet;
    }
  });

  test("a worker failure rejects every request in flight, naming the engine", async () => {
    const worker = connected({ hang: never });
    const { call } = workerClient(worker, { name: "text engine" });
    const a = call("hang");
    const b = call("hang");
    worker.onerror({ message: "out of memory" });
    await assert.rejects(a, /^Error: text engine worker failed: out of memory$/);
    await assert.rejects(b, /text engine worker failed/);
  });

  test("close() asks the worker to close, terminates it, and later calls reject", async () => {
    const closed = [];
    const worker = connected({ close: () => { closed.push(true); return true; }, hang: never });
    const { call, close } = workerClient(worker);
    const inFlight = call("hang");
    await close();
    await close(); // twice is fine
    assert.deepEqual(closed, [true]);
    assert.equal(worker.terminated, 1);
    await assert.rejects(inFlight, /^Error: engine closed$/);
    await assert.rejects(call("hang"), /^Error: engine closed$/);
  });

  test("terminate() ends a failed start without asking for close", async () => {
    const worker = connected({ close: () => assert.fail("close was asked"), hang: never });
    const { call, terminate } = workerClient(worker);
    const inFlight = call("hang");
    terminate();
    assert.equal(worker.terminated, 1);
    await assert.rejects(inFlight, /engine closed/);
    await assert.rejects(call("hang"), /engine closed/);
  });
});
