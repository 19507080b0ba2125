// contributor/static/js/connection.js (and the ./session.js work it carries) driven through a
// scripted websocket: what the page sends for each registry message, and when it stops,
// reconnects or pauses (docs/protocol.md §4, §6.1, §7).
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { fixture, js, verify } from "./helpers.mjs";

const { NodeConnection, reconnectDelayMs } = await import(js("connection.js"));
const keystore = await import(js("keystore.js"));
const protocol = await import(js("protocol.js"));

const SUBNET = { slug: "minilm-embed", model_checksum: fixture.hashes.contract.model_checksum };
const embedding = fixture.results.find((c) => c.task_type === "embedding");
const JOB = {
  type: "job", assignment_id: embedding.fields.assignment_id, job_id: fixture.hashes.contract.job_id, role: "A",
  contract: fixture.hashes.contract, contract_hash: fixture.hashes.contract_hash, inputs: fixture.hashes.inputs,
  deadline: "2999-01-01T00:00:00+00:00",
};

/** The registry's end of one socket: what the page sent, and messages to deliver to it. */
class ScriptedSocket {
  static opened = [];
  readyState = 1;
  sent = [];
  closedWith = null;
  constructor(url) { this.url = url; ScriptedSocket.opened.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  // As in browsers, the close event comes after close() returns.
  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 2; queueMicrotask(() => this.drop(code)); }
  deliver(message) { this.onmessage({ data: typeof message === "string" ? message : JSON.stringify(message) }); }
  drop(code) { this.readyState = 3; this.onclose({ code }); }
  ofType(type) { return this.sent.filter((m) => m.type === type); }
}

/** Every view call, by name; log() answers with its line as ./view.js does. */
function recordingView() {
  const calls = [];
  const view = new Proxy({}, { get: (_, name) => (...args) => { calls.push([name, ...args]); return args[0]; } });
  return { view, calls, named: (name) => calls.filter(([n]) => n === name).map(([, ...args]) => args) };
}

/** The engine's embed with the worked example's vectors; `gate` holds a run until opened. */
function scriptedEngine() {
  const engine = {
    modelChecksum: SUBNET.model_checksum, manifest: { tokenizer_checksum: fixture.hashes.contract.tokenizer_checksum },
    runs: 0, gate: null,
    async embed(texts) {
      engine.runs += 1;
      if (engine.gate) await engine.gate;
      assert.equal(texts.length, 2);
      return { data: Float32Array.from(embedding.result.data), rows: 2, dim: 4 };
    },
  };
  return engine;
}

/** Waits (without timers, which some tests mock) until `condition()` holds. */
async function until(condition, what = String(condition)) {
  for (let i = 0; i < 20_000; i++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never happened: ${what}`);
}

let node, socket, recorder, state, engine;

async function connected({ onComputed } = {}) {
  const key = await keystore.newEd25519Key();
  engine = scriptedEngine();
  state = {
    phase: "starting", nodeId: fixture.hello.node_id, key, env: { os: "linux", cpu_count: 4 }, subnet: SUBNET, engine,
    paused: false, stopped: null, benchmark: null, counts: { done: 0, accepted: 0, failed: 0 }, connects: 0, log: [],
  };
  recorder = recordingView();
  node = new NodeConnection({ state, view: recorder.view, url: "ws://registry.test/ws/node/", WebSocketImpl: ScriptedSocket, onComputed });
  node.connect();
  socket = ScriptedSocket.opened.at(-1);
  return key;
}

/** challenge → hello → welcome → ready → ready_ok; resolves to the hello. */
async function handshake(ws = socket) {
  ws.deliver({ type: "challenge", nonce: fixture.hello.nonce, protocol: "bim/1" });
  await until(() => ws.ofType("hello").length === 1, "hello");
  ws.deliver({ type: "welcome", node_id: state.nodeId, heartbeat_s: 3600, subnets: [SUBNET] });
  ws.deliver({ type: "ready_ok", subnet: SUBNET.slug });
  await until(() => state.phase === `ready on ${SUBNET.slug}`, "ready_ok");
  return ws.ofType("hello")[0];
}

beforeEach(() => { ScriptedSocket.opened.length = 0; });
// Closing clears the heartbeat interval, so no test leaves a timer behind.
afterEach(() => { node.stop("test over"); });

describe("a connection's life", () => {
  test("hello certifies a fresh session key; results and benchmarks are signed with it", async () => {
    const key = await connected();
    assert.equal(socket.url, "ws://registry.test/ws/node/");
    assert.equal(state.phase, "connecting");
    const hello = await handshake();
    assert.equal(hello.node_id, state.nodeId);
    assert.deepEqual(hello.env, state.env);
    const longTermPub = await keystore.publicKeyB64(key.publicKey);
    assert.ok(await verify(longTermPub, hello.signature, protocol.helloMessage(state.nodeId, fixture.hello.nonce, hello.session_key_pub)));
    assert.deepEqual(socket.ofType("ready"), [{ type: "ready", subnet: SUBNET.slug, model_checksum: SUBNET.model_checksum, max_concurrent: 1 }]);
    assert.deepEqual(recorder.named("pauseButton").at(-1), [{ enabled: true }]);

    socket.deliver({ type: "benchmark", benchmark_id: "b-1", inputs: { texts: fixture.hashes.inputs.texts }, runs: 3 });
    await until(() => socket.ofType("benchmark_result").length === 1, "benchmark_result");
    const bench = socket.ofType("benchmark_result")[0];
    assert.equal(engine.runs, 3);
    assert.equal(bench.timings_ms.length, 3);
    assert.equal(bench.result_hash, embedding.fields.result_hash);
    assert.ok(await verify(hello.session_key_pub, bench.signature, protocol.benchmarkMessage(bench)));
    socket.deliver({ type: "benchmark_ok", benchmark_id: "b-1", items_per_s: 12.5, latency_p50_ms: 80 });
    await until(() => state.benchmark?.passed === true, "benchmark_ok");

    socket.deliver(JOB);
    await until(() => socket.ofType("result").length === 1, "result");
    const result = socket.ofType("result")[0];
    assert.equal(result.data, embedding.data);
    assert.ok(await verify(hello.session_key_pub, result.signature, protocol.resultMessage({ ...embedding.fields, shape: result.shape })));
    assert.equal(state.counts.done, 1);
    socket.deliver({ type: "result_ok", assignment_id: JOB.assignment_id });
    await until(() => state.counts.accepted === 1, "result_ok");
    assert.deepEqual(recorder.named("jobMark").map(([, status]) => status), ["computing", "sent", "submitted"]);
  });

  test("a job that fails its checks is answered job_failed, not computed", async () => {
    await connected();
    await handshake();
    socket.deliver({ ...JOB, inputs: { texts: ["tampered", "inputs"] } });
    await until(() => socket.ofType("job_failed").length === 1, "job_failed");
    assert.deepEqual(socket.ofType("job_failed")[0], { type: "job_failed", assignment_id: JOB.assignment_id, reason: "bad_input_hash" });
    assert.equal(engine.runs, 0);
    assert.equal(state.counts.failed, 1);
  });

  test("a job cancelled while it waits in the queue is never computed", async () => {
    await connected();
    await handshake();
    let open;
    engine.gate = new Promise((resolve) => { open = resolve; });
    socket.deliver(JOB);
    await until(() => engine.runs === 1, "first job running");
    const queued = { ...JOB, assignment_id: "0a0b0c0d-0000-4000-8000-000000000001" };
    socket.deliver(queued);
    socket.deliver({ type: "cancel", assignment_id: queued.assignment_id });
    await until(() => recorder.named("jobMark").some(([id, status]) => id === queued.assignment_id && status === "cancelled"), "cancel");
    open();
    await until(() => socket.ofType("result").length === 1, "first result");
    await until(() => !node.current.working, "queue dry");
    assert.equal(engine.runs, 1);
    assert.deepEqual(socket.ofType("result").map((m) => m.assignment_id), [JOB.assignment_id]);
  });

  test("busy: the same signed result once more, then no more", async (t) => {
    await connected();
    await handshake();
    socket.deliver(JOB);
    await until(() => socket.ofType("result").length === 1, "result");
    t.mock.timers.enable({ apis: ["setTimeout"] });
    socket.deliver({ type: "error", code: "busy", assignment_id: JOB.assignment_id, detail: "try again" });
    await until(() => state.log.some((line) => line.includes("sending the result again")), "busy logged");
    t.mock.timers.tick(500);
    assert.deepEqual(socket.ofType("result")[1], socket.ofType("result")[0]);
    socket.deliver({ type: "error", code: "busy", assignment_id: JOB.assignment_id, detail: "still busy" });
    await until(() => recorder.named("jobMark").some(([, status]) => status === "refused: busy"), "second busy refused");
    t.mock.timers.tick(1000);
    assert.equal(socket.ofType("result").length, 2);
  });

  test("a peer-to-peer offer waits for its input, unrun; the relay's job_inputs runs it as a relay job", async () => {
    await connected();
    const hello = await handshake();
    const contract = { ...JOB.contract, transport: "p2p", input_summary: { items: 2 } };
    const offer = { ...JOB, contract, contract_hash: await protocol.contractHash(contract), transport: "p2p", ice_servers: [] };
    delete offer.inputs;
    socket.deliver(offer);
    await until(() => recorder.named("jobMark").some(([, status]) => status === "waiting for input"), "waiting");
    assert.equal(recorder.named("jobAdd")[0][0].items, 2);
    assert.equal(engine.runs, 0);
    socket.deliver({ type: "job_inputs", job_id: JOB.job_id, assignment_id: JOB.assignment_id, inputs: { texts: ["tampered", "inputs"] } });
    await until(() => socket.ofType("job_failed").length === 1, "refused relayed inputs");
    assert.equal(socket.ofType("job_failed")[0].reason, "bad_input_hash");
    // Given up once: the honest inputs after it find nothing waiting.
    socket.deliver({ type: "job_inputs", job_id: JOB.job_id, assignment_id: JOB.assignment_id, inputs: JOB.inputs });
    const second = { ...offer, assignment_id: "0a0b0c0d-0000-4000-8000-000000000002" };
    socket.deliver(second);
    socket.deliver({ type: "job_inputs", job_id: JOB.job_id, assignment_id: second.assignment_id, inputs: JOB.inputs });
    await until(() => socket.ofType("result").length === 1, "result");
    const result = socket.ofType("result")[0];
    assert.equal(result.assignment_id, second.assignment_id);
    assert.equal(result.result_hash, embedding.fields.result_hash);
    assert.equal(result.data, embedding.data);
    const fields = { ...embedding.fields, assignment_id: second.assignment_id, contract_hash: offer.contract_hash, shape: result.shape };
    assert.ok(await verify(hello.session_key_pub, result.signature, protocol.resultMessage(fields)));
    assert.equal(engine.runs, 1);
    assert.equal(socket.ofType("result_commit").length, 0);
  });

  test("frames that are not JSON objects with a type are ignored", async () => {
    await connected();
    socket.deliver("not json");
    socket.deliver("[1, 2]");
    socket.deliver({ no: "type" });
    assert.equal(state.log.filter((line) => line === "ignored a frame that is not a JSON object").length, 3);
    assert.deepEqual(socket.sent, []);
  });
});

describe("the operator pauses, resumes or retires the subnet (subnet_state)", () => {
  test("paused: offers are given back unrun and the page says so; resumed: jobs run again", async () => {
    await connected();
    await handshake();
    socket.deliver({ type: "subnet_state", subnet: SUBNET.slug, state: "paused", model_checksum: SUBNET.model_checksum });
    await until(() => state.subnetState === "paused", "paused");
    assert.equal(state.phase, `${SUBNET.slug} paused by its operator`);
    assert.equal(recorder.named("notice").at(-1)[0], "Subnet paused");

    socket.deliver(JOB);
    await until(() => socket.ofType("job_failed").length === 1, "offer given back");
    assert.deepEqual(socket.ofType("job_failed")[0], { type: "job_failed", assignment_id: JOB.assignment_id, reason: "subnet_paused" });
    assert.equal(engine.runs, 0);
    assert.equal(state.counts.failed, 0);
    assert.equal(socket.closedWith, null); // stays connected, to hear of the resume

    socket.deliver({ type: "subnet_state", subnet: SUBNET.slug, state: "active", model_checksum: SUBNET.model_checksum });
    await until(() => state.phase === `ready on ${SUBNET.slug}`, "resumed");
    socket.deliver({ ...JOB, assignment_id: "0a0b0c0d-0000-4000-8000-000000000002" });
    await until(() => socket.ofType("result").length === 1, "a job after the resume");
    assert.equal(engine.runs, 1);
  });

  test("another subnet's state changes nothing here", async () => {
    await connected();
    await handshake();
    socket.deliver({ type: "subnet_state", subnet: "some-other-subnet", state: "retired" });
    socket.deliver(JOB);
    await until(() => socket.ofType("result").length === 1, "result");
    assert.equal(state.stopped, null);
  });

  test("a subnet listed paused in welcome declines offers from the start", async () => {
    await connected();
    socket.deliver({ type: "challenge", nonce: fixture.hello.nonce, protocol: "bim/1" });
    await until(() => socket.ofType("hello").length === 1, "hello");
    socket.deliver({ type: "welcome", node_id: state.nodeId, heartbeat_s: 3600, subnets: [{ ...SUBNET, state: "paused" }] });
    await until(() => socket.ofType("ready").length === 1, "ready");
    assert.equal(state.subnetState, "paused");
    socket.deliver(JOB);
    await until(() => socket.ofType("job_failed").length === 1, "offer given back");
    assert.equal(engine.runs, 0);
  });

  test("retired: contributing stops for good", async () => {
    await connected();
    await handshake();
    socket.deliver({ type: "subnet_state", subnet: SUBNET.slug, state: "retired", model_checksum: SUBNET.model_checksum });
    await until(() => state.phase === "stopped", "stopped");
    assert.match(state.stopped, /was retired by its operator/);
  });
});

describe("stopping, reconnecting and pausing", () => {
  for (const code of [4401, 4001, 4003, 4403, 4409]) {
    test(`close ${code} stops the page for good`, async (t) => {
      await connected();
      t.mock.timers.enable({ apis: ["setTimeout"] });
      socket.drop(code);
      assert.equal(state.phase, "stopped");
      assert.match(state.stopped, new RegExp(`^Closed by the registry \\(${code}\\): `));
      assert.equal(recorder.named("notice")[0][0], "Contributing stopped");
      t.mock.timers.tick(120_000);
      assert.equal(ScriptedSocket.opened.length, 1);
    });
  }

  test("other closes reconnect after a capped, jittered backoff, with a new session key", async (t) => {
    await connected();
    const first = await handshake();
    t.mock.timers.enable({ apis: ["setTimeout"] });
    socket.drop(1006);
    assert.match(state.phase, /^disconnected \(1006\); reconnecting in (0\.[5-9]|1\.0) s$/);
    t.mock.timers.tick(1000);
    assert.equal(ScriptedSocket.opened.length, 2);
    assert.equal(state.connects, 2);
    const second = await handshake(ScriptedSocket.opened[1]);
    assert.notEqual(second.session_key_pub, first.session_key_pub);
  });

  test("after a reconnect the work welcome lists goes back as lost_on_reconnect, before ready", async () => {
    await connected();
    socket.deliver({ type: "challenge", nonce: fixture.hello.nonce, protocol: "bim/1" });
    await until(() => socket.ofType("hello").length === 1, "hello");
    const listed = ["a-1", "a-2"];
    socket.deliver({ type: "welcome", node_id: state.nodeId, heartbeat_s: 3600, subnets: [SUBNET], assignments: [...listed, 7] });
    await until(() => socket.ofType("ready").length === 1, "ready");
    assert.deepEqual(socket.ofType("job_failed"), listed.map((id) => ({ type: "job_failed", assignment_id: id, reason: "lost_on_reconnect" })));
    const kinds = socket.sent.map((m) => m.type);
    assert.ok(kinds.lastIndexOf("job_failed") < kinds.indexOf("ready"));
  });

  test("the backoff doubles from 1 s up to 60 s, times [0.5, 1)", () => {
    assert.equal(reconnectDelayMs(0, () => 0), 500);
    assert.equal(reconnectDelayMs(0, () => 1), 1000);
    assert.equal(reconnectDelayMs(3, () => 0), 4000);
    assert.equal(reconnectDelayMs(6, () => 0.5), 45_000);
    assert.equal(reconnectDelayMs(20, () => 0), 30_000);
  });

  test("the registry refusing the node, or another model or protocol, stops it", async () => {
    const cases = [
      [{ type: "error", code: "license_not_accepted", detail: "accept it first" }, /license_not_accepted/],
      [{ type: "welcome", heartbeat_s: 3600, subnets: [{ ...SUBNET, model_checksum: "cd".repeat(32) }] }, /now runs another model/],
      [{ type: "welcome", heartbeat_s: 3600, subnets: [] }, /does not serve minilm-embed/],
      [{ type: "challenge", nonce: fixture.hello.nonce, protocol: "bim/2" }, /speaks bim\/2/],
    ];
    for (const [message, reason] of cases) {
      ScriptedSocket.opened.length = 0;
      await connected();
      socket.deliver(message);
      await until(() => state.stopped !== null, JSON.stringify(message));
      assert.match(state.stopped, reason);
      assert.deepEqual(socket.closedWith, { code: 1000, reason: "stopping" });
    }
  });

  test("pause finishes the running job, then closes; resume connects again", async () => {
    await connected();
    await handshake();
    let open;
    engine.gate = new Promise((resolve) => { open = resolve; });
    socket.deliver(JOB);
    await until(() => engine.runs === 1, "job running");
    const queued = { ...JOB, assignment_id: "0a0b0c0d-0000-4000-8000-000000000002" };
    socket.deliver(queued);
    await until(() => recorder.named("jobAdd").length === 2, "second job queued");
    node.pause();
    assert.equal(state.phase, "pausing");
    assert.equal(socket.closedWith, null);
    assert.ok(recorder.named("jobMark").some(([id, status]) => id === queued.assignment_id && status === "abandoned"));
    open();
    await until(() => state.phase === "paused", "paused");
    assert.deepEqual(socket.closedWith, { code: 1000, reason: "paused" });
    assert.deepEqual(socket.ofType("result").map((m) => m.assignment_id), [JOB.assignment_id]);
    node.resume();
    assert.equal(ScriptedSocket.opened.length, 2);
    await handshake(ScriptedSocket.opened[1]);
  });

  test("pause says why; disconnected() waits for the running job's answer and the close", async () => {
    await connected();
    await handshake();
    let open;
    engine.gate = new Promise((resolve) => { open = resolve; });
    socket.deliver(JOB);
    await until(() => engine.runs === 1, "job running");
    node.pause("this tab is hidden");
    assert.match(state.log.at(-1), /^paused \(this tab is hidden\): finishing the running job/);
    let gone = false;
    const disconnected = node.disconnected().then(() => { gone = true; });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(gone, false);
    open();
    await disconnected;
    assert.deepEqual(socket.ofType("result").map((m) => m.assignment_id), [JOB.assignment_id]);
    assert.deepEqual(socket.closedWith, { code: 1000, reason: "paused" });
    assert.equal(state.phase, "paused");
    await node.disconnected(); // nothing open: at once
  });

  test("every model call's time is reported: each benchmark run, each job", async () => {
    const computed = [];
    await connected({ onComputed: (work) => computed.push(work) });
    await handshake();
    socket.deliver({ type: "benchmark", benchmark_id: "b-2", inputs: { texts: fixture.hashes.inputs.texts }, runs: 2 });
    await until(() => socket.ofType("benchmark_result").length === 1, "benchmark_result");
    socket.deliver(JOB);
    await until(() => socket.ofType("result").length === 1, "result");
    assert.deepEqual(computed.map(({ kind, items }) => [kind, items]), [["benchmark", 2], ["benchmark", 2], ["job", 2]]);
    assert.ok(computed.every(({ ms }) => Number.isFinite(ms) && ms >= 0));
    assert.equal(socket.ofType("result")[0].elapsed_ms, Math.round(computed[2].ms));
  });

  test("resumed before registration, the page connects once registered", async () => {
    state = {
      phase: "starting", nodeId: null, key: null, env: null, subnet: SUBNET, engine: scriptedEngine(),
      paused: false, stopped: null, benchmark: null, counts: { done: 0, accepted: 0, failed: 0 }, connects: 0, log: [],
    };
    node = new NodeConnection({ state, view: recordingView().view, url: "ws://registry.test/ws/node/", WebSocketImpl: ScriptedSocket });
    node.pause("you paused");
    assert.equal(state.phase, "paused");
    node.resume();
    assert.equal(ScriptedSocket.opened.length, 0);
    assert.equal(state.phase, "starting");
    state.nodeId = fixture.hello.node_id;
    node.connect();
    assert.equal(ScriptedSocket.opened.length, 1);
  });

  test("pause between connections needs nothing to finish", async (t) => {
    await connected();
    t.mock.timers.enable({ apis: ["setTimeout"] });
    socket.drop(1006);
    node.pause();
    assert.equal(state.phase, "paused");
    t.mock.timers.tick(120_000);
    assert.equal(ScriptedSocket.opened.length, 1);
  });
});
