// contributor/static/js/peer-jobs.js (with ./peer-answer.js and ./datachannel.js): a
// peer-to-peer job from the offer to the commit, driven through a scripted
// RTCPeerConnection whose data channel is tests/js/channels.mjs's pipe, the user's end
// framed by the same FramedChannel. The real connection is Chromium's, in
// tests/browser/test_contributor_p2p.py.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { channelPair, until } from "./channels.mjs";
import { fixture, js } from "./helpers.mjs";

const { FramedChannel } = await import(js("datachannel.js"));
const jobs = await import(js("jobs.js"));
const protocol = await import(js("protocol.js"));
const { transportFigures } = await import(js("peer-answer.js"));
const { PeerJobs, RESULT_HEADER_FIELDS } = await import(js("peer-jobs.js"));
const { ResultStore } = await import(js("result-store.js"));
const { PARTIAL_INTERVAL_MS, Session, partialSender } = await import(js("session.js"));

const { contract, inputs } = fixture.hashes;
const embedding = fixture.results.find((c) => c.task_type === "embedding");
const OFFER_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
const ICE = [{ urls: ["stun:127.0.0.1:3478"] }, { urls: "turn:127.0.0.1:3478", username: "1:node-1", credential: "c" }, { urls: 7 }];

/** What Chromium's getStats reports for a data channel over a host pair (the shape read by
 * transportFigures; the real one is checked in the browser test). */
function chromiumStats({ sent, received, local = "host", remote = "host" }) {
  return new Map(Object.entries({
    T01: { id: "T01", type: "transport", selectedCandidatePairId: "CPa_b", dtlsState: "connected" },
    CPa_b: { id: "CPa_b", type: "candidate-pair", localCandidateId: "Ia", remoteCandidateId: "Ib", state: "succeeded", nominated: true },
    CPc_d: { id: "CPc_d", type: "candidate-pair", localCandidateId: "Ic", remoteCandidateId: "Id", state: "failed" },
    Ia: { id: "Ia", type: "local-candidate", candidateType: local },
    Ib: { id: "Ib", type: "remote-candidate", candidateType: remote },
    Ic: { id: "Ic", type: "local-candidate", candidateType: "relay" },
    Id: { id: "Id", type: "remote-candidate", candidateType: "relay" },
    D1: { id: "D1", type: "data-channel", label: "bim", bytesSent: sent, bytesReceived: received },
    D2: { id: "D2", type: "data-channel", label: "other", bytesSent: 99, bytesReceived: 99 },
  }));
}

/** The browser's RTCPeerConnection as far as the page uses it; `userChannel(label)` plays
 * the offerer's createDataChannel and returns the user's framed end. */
class ScriptedPeerConnection {
  static made = [];
  iceGatheringState = "new";
  candidates = [];
  closed = false;
  localDescription = null;
  nodeChannel = null;

  static gathers = true; // false: gathering never completes on its own

  constructor(config) { this.config = config; ScriptedPeerConnection.made.push(this); }
  async setRemoteDescription(description) {
    if (!description.sdp.includes("m=application")) throw new Error("InvalidAccessError: no data channel section");
    this.remote = description;
  }
  async createAnswer() { return { type: "answer", sdp: "v=0\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n" }; }
  async setLocalDescription(description) {
    this.localDescription = description;
    this.iceGatheringState = ScriptedPeerConnection.gathers ? "complete" : "gathering";
  }
  /** A browser's candidate events: a candidate, or null when gathering ends. */
  gather(line) {
    if (line === null) this.iceGatheringState = "complete";
    this.onicecandidate({ candidate: line === null ? null : { toJSON: () => ({ candidate: line, sdpMid: "0", sdpMLineIndex: 0 }) } });
  }
  async addIceCandidate(candidate) { this.candidates.push(candidate); }
  addEventListener() {}
  removeEventListener() {}
  async getStats() {
    const count = (frames) => frames.reduce((n, f) => n + (typeof f === "string" ? Buffer.byteLength(f) : f.byteLength), 0);
    const user = this.nodeChannel.other;
    return chromiumStats({ sent: count(this.nodeChannel.sent), received: count(user.sent) });
  }
  close() { this.closed = true; this.nodeChannel?.close(); }
  userChannel(label = "bim") {
    const [user, node] = channelPair(label);
    if (label === "bim") this.nodeChannel = node;
    const framed = new FramedChannel(user);
    this.ondatachannel({ channel: node });
    return { framed, node };
  }
}

const p2pContract = { ...contract, transport: "p2p", input_summary: { items: 2 } };
let p2p, sent, queued, recorded, store;

async function offeredJob(deadline = Date.now() + 60_000, iceTransportPolicy = "all") {
  const message = {
    type: "job", assignment_id: embedding.fields.assignment_id, job_id: contract.job_id, role: "A", transport: "p2p",
    contract: p2pContract, contract_hash: await protocol.contractHash(p2pContract), ice_servers: ICE,
    deadline: new Date(deadline).toISOString(),
  };
  const job = await jobs.checkP2pOffer(message, { modelChecksum: contract.model_checksum });
  p2p.offered(job, message.ice_servers, iceTransportPolicy);
  return job;
}

/** Offer, answer, open: the user's framed end of the job's channel. */
async function connected(job) {
  p2p.onRtcOffer({ type: "rtc_offer", job_id: job.jobId, assignment_id: job.assignmentId, sdp: OFFER_SDP });
  await until(() => sent.some((m) => m.type === "rtc_answer"));
  const pc = ScriptedPeerConnection.made.at(-1);
  return { pc, ...pc.userChannel() };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const inputFrame = (job, value = inputs) => [
  { kind: "input", job_id: job.jobId, assignment_id: job.assignmentId }, protocol.canonicalBytes(value),
];

beforeEach(() => {
  ScriptedPeerConnection.made = [];
  ScriptedPeerConnection.gathers = true;
  sent = [];
  queued = [];
  recorded = [];
  store = new ResultStore();
  p2p = new PeerJobs({
    send: (message) => sent.push(message), enqueue: (job) => queued.push(job), store, record: (f) => recorded.push(f),
    RTCPeerConnectionImpl: ScriptedPeerConnection, lingerMs: 200, connectTimeoutMs: 500, gatherMaxMs: 50,
  });
});

afterEach(() => p2p.close());

describe("a peer-to-peer job", () => {
  test("answers the offer with the job's ICE servers, reads the input, returns the result and commits it", async () => {
    const job = await offeredJob();
    const { pc, framed } = await connected(job);
    assert.deepEqual(pc.config.iceServers, ICE.slice(0, 2)); // the malformed entry dropped
    assert.equal(pc.config.iceTransportPolicy, "all");
    assert.deepEqual(sent, [{ type: "rtc_answer", assignment_id: job.assignmentId, sdp: pc.localDescription.sdp }]);
    assert.equal(pc.remote.sdp, OFFER_SDP);
    // The user's trickled candidates reach the connection.
    p2p.onRtcIce({ assignment_id: job.assignmentId, candidate: { candidate: "candidate:2 1 udp 2 127.0.0.1 6000 typ host", sdpMid: "0", sdpMLineIndex: 0 } });
    await until(() => pc.candidates.length === 1);

    await framed.send(...inputFrame(job));
    await until(() => queued.length === 1);
    assert.deepEqual(queued[0].texts, inputs.texts);
    assert.equal(queued[0].transport, "p2p");

    // The work loop computed it (./session.js): the result goes to the user, the commit is returned.
    const session = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"]);
    const output = { data: Float32Array.from(embedding.result.data), rows: 2, dim: 4 };
    const { message, payload } = await jobs.signedResult(queued[0], output, session.privateKey, 12);
    const commit = await p2p.deliver(queued[0], message, payload);
    const result = await framed.receive(1000);
    assert.deepEqual(result.header, { kind: "result", ...Object.fromEntries(RESULT_HEADER_FIELDS.map((k) => [k, message[k]])) });
    assert.equal(await protocol.sha256Hex(result.payload), message.result_hash);

    const userSent = pc.nodeChannel.other.sent.reduce((n, f) => n + (typeof f === "string" ? Buffer.byteLength(f) : f.byteLength), 0);
    const nodeSent = pc.nodeChannel.sent.reduce((n, f) => n + (typeof f === "string" ? Buffer.byteLength(f) : f.byteLength), 0);
    const expected = { ...message, type: "result_commit", size: payload.length, transport: { relayed: false, bytes_sent: nodeSent, bytes_received: userSent } };
    delete expected.data;
    assert.deepEqual(commit, expected);
    assert.equal(recorded.length, 1);
    assert.equal(recorded[0].inputBytes, protocol.canonicalBytes(inputs).length);
    assert.ok(recorded[0].offerToOpenMs >= 0 && recorded[0].offerToAnswerMs >= 0);
    // Kept for the registry's upload, with the input when it asks.
    assert.deepEqual(p2p.onUploadRequest({ assignment_id: job.assignmentId, reason: "audit", with_inputs: true }), { ...message, inputs });
    assert.deepEqual(sent.at(-1), { ...message, inputs });
    assert.deepEqual(p2p.onUploadRequest({ assignment_id: job.assignmentId, reason: "undelivered", with_inputs: false }), message);
    assert.equal(p2p.onUploadRequest({ assignment_id: "never-kept", reason: "audit" }), null);

    // The user read it and closed: the page closes its connection.
    assert.equal(pc.closed, false);
    framed.channel.close();
    await until(() => pc.closed);
    assert.ok(recorded[0].closedAfterMs >= 0);
  });

  test("the answer carries every candidate; only when gathering outlasts gatherMaxMs do later ones trickle", async () => {
    const job = await offeredJob();
    const { pc } = await connected(job);
    pc.gather(null); // the end of a gathering that completed before the answer went
    assert.deepEqual(sent.map((m) => m.type), ["rtc_answer"]);

    ScriptedPeerConnection.gathers = false;
    const job2 = { ...job, assignmentId: "slow-gathering" };
    p2p.offered(job2, []);
    p2p.onRtcOffer({ assignment_id: job2.assignmentId, sdp: OFFER_SDP });
    await until(() => ScriptedPeerConnection.made.length === 2);
    await sleep(20);
    assert.equal(sent.length, 1, "no answer before gatherMaxMs");
    await sleep(60);
    assert.deepEqual(sent.at(-1), { type: "rtc_answer", assignment_id: job2.assignmentId, sdp: ScriptedPeerConnection.made[1].localDescription.sdp });
    const slow = ScriptedPeerConnection.made[1];
    slow.gather("candidate:9 1 udp 9 192.0.2.9 9999 typ srflx raddr 0.0.0.0 rport 0");
    slow.gather(null);
    assert.deepEqual(sent.slice(-2), [
      { type: "rtc_ice", assignment_id: job2.assignmentId, candidate: { candidate: "candidate:9 1 udp 9 192.0.2.9 9999 typ srflx raddr 0.0.0.0 rport 0", sdpMid: "0", sdpMLineIndex: 0 } },
      { type: "rtc_ice", assignment_id: job2.assignmentId, candidate: { candidate: "" } },
    ]);
  });

  test("a lingering connection the user never closes is closed after lingerMs", async () => {
    const job = await offeredJob();
    const { pc, framed } = await connected(job);
    await framed.send(...inputFrame(job));
    await until(() => queued.length === 1);
    const session = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"]);
    const { message, payload } = await jobs.signedResult(queued[0], { data: Float32Array.from(embedding.result.data), rows: 2, dim: 4 }, session.privateKey, 1);
    await p2p.deliver(queued[0], message, payload);
    await framed.receive(1000);
    await sleep(50);
    assert.equal(pc.closed, false, "the user may still be reading");
    await sleep(250); // lingerMs 200
    assert.ok(pc.closed);
  });

  test("an offer that arrives before its job is answered when the job comes", async () => {
    p2p.onRtcOffer({ type: "rtc_offer", job_id: contract.job_id, assignment_id: embedding.fields.assignment_id, sdp: OFFER_SDP });
    assert.equal(sent.length, 0);
    await offeredJob();
    await until(() => sent.some((m) => m.type === "rtc_answer"));
    assert.equal(ScriptedPeerConnection.made.at(-1).remote.sdp, OFFER_SDP);
  });

  test("the registry's relay-only policy makes the page gather TURN candidates only", async () => {
    const job = await offeredJob(Date.now() + 60_000, "relay");
    const { pc } = await connected(job);
    assert.equal(pc.config.iceTransportPolicy, "relay");
  });

  test("an input that is not the contract's is refused to the user and to the registry", async () => {
    // The input, when it is an object that may be the contract's, goes to the registry as the
    // refusal's evidence (the registry keeps it only if it has the contract's hash).
    const cases = [
      [(job) => inputFrame(job, { texts: ["hello world", "something else"] }), "bad_input_hash", {}],
      [(job) => [{ kind: "input", job_id: job.jobId, assignment_id: "another" }, protocol.canonicalBytes(inputs)], "bad_input", {}],
      [(job) => [{ kind: "input", job_id: job.jobId, assignment_id: job.assignmentId }, Uint8Array.of(0x7b, 0xff)], "bad_input", {}],
      [(job) => inputFrame(job, { texts: "hello world" }), "bad_input", { inputs: { texts: "hello world" } }],
    ];
    for (const [frame, reason, evidence] of cases) {
      sent.length = 0;
      const job = await offeredJob();
      const { framed } = await connected(job);
      await framed.send(...frame(job));
      const refusal = await framed.receive(1000);
      assert.deepEqual(refusal.header, { kind: "input_refused", reason });
      await until(() => sent.some((m) => m.type === "job_failed"));
      assert.deepEqual(sent.at(-1), { type: "job_failed", assignment_id: job.assignmentId, reason, ...evidence });
      assert.equal(queued.length, 0);
    }
  });

  test("frames before the input are skipped; a second channel is closed unread", async () => {
    const job = await offeredJob();
    const { pc, framed } = await connected(job);
    const other = pc.userChannel("not-bim");
    assert.equal(other.node.closeCalls, 1);
    await framed.send({ kind: "hello" });
    await framed.send(...inputFrame(job));
    await until(() => queued.length === 1);
  });

  test("the relay's job_inputs runs it as a relay job, and closes the channel", async () => {
    const job = await offeredJob();
    const { pc } = await connected(job);
    p2p.onJobInputs({ type: "job_inputs", job_id: job.jobId, assignment_id: job.assignmentId, inputs });
    await until(() => queued.length === 1);
    assert.equal(queued[0].transport, "relay");
    assert.deepEqual(queued[0].texts, inputs.texts);
    assert.ok(pc.closed);
    // Only once: a second job_inputs, or an offer, finds nothing waiting.
    p2p.onJobInputs({ type: "job_inputs", job_id: job.jobId, assignment_id: job.assignmentId, inputs });
    p2p.onRtcOffer({ assignment_id: job.assignmentId, sdp: OFFER_SDP });
    await sleep(20);
    assert.equal(queued.length, 1);
    assert.equal(ScriptedPeerConnection.made.length, 1);
  });

  test("no input by the deadline: input_not_received, and the connection closes", async () => {
    const job = await offeredJob(Date.now() + 150);
    p2p.onRtcOffer({ assignment_id: job.assignmentId, sdp: OFFER_SDP });
    await until(() => ScriptedPeerConnection.made.length === 1);
    await sleep(250);
    assert.deepEqual(sent.at(-1), { type: "job_failed", assignment_id: job.assignmentId, reason: "input_not_received" });
    assert.ok(ScriptedPeerConnection.made[0].closed);
    assert.equal(queued.length, 0);
  });

  test("a channel that never opens is given up; another offer is answered", async () => {
    const job = await offeredJob();
    p2p.onRtcOffer({ assignment_id: job.assignmentId, sdp: OFFER_SDP });
    await until(() => sent.some((m) => m.type === "rtc_answer"));
    await sleep(600); // connectTimeoutMs 500
    assert.ok(ScriptedPeerConnection.made[0].closed);
    const { framed } = await connected(job);
    await framed.send(...inputFrame(job));
    await until(() => queued.length === 1);
    // An offer that cannot be answered (no data channel section) leaves the job waiting.
    const job2 = { ...job, assignmentId: "second" };
    p2p.offered(job2, []);
    p2p.onRtcOffer({ assignment_id: "second", sdp: "v=0\r\n" });
    await until(() => ScriptedPeerConnection.made.length === 3 && ScriptedPeerConnection.made[2].closed);
    assert.ok(p2p.waiting.has("second"));
  });
});

test("transportFigures reads the selected pair's candidate types and the bim channel's bytes", () => {
  assert.deepEqual(transportFigures(chromiumStats({ sent: 3210, received: 1100 }), { counted: { sent: 1, received: 2 } }), {
    relayed: false, local_candidate: "host", remote_candidate: "host", bytes_sent: 3210, bytes_received: 1100, bytes_from: "getStats",
  });
  // A closed channel has no stats in Chromium: the framing's own counts stand in.
  const closed = chromiumStats({ sent: 0, received: 0 });
  closed.delete("D1");
  assert.deepEqual(transportFigures(closed, { counted: { sent: 3210, received: 1100 } }), {
    relayed: false, local_candidate: "host", remote_candidate: "host", bytes_sent: 3210, bytes_received: 1100, bytes_from: "framing",
  });
  assert.equal(transportFigures(chromiumStats({ sent: 1, received: 1, remote: "relay" })).relayed, true);
  // Without a transport naming the pair, the nominated and succeeded one.
  const report = chromiumStats({ sent: 5, received: 6, local: "srflx" });
  report.delete("T01");
  assert.equal(transportFigures(report).local_candidate, "srflx");
  assert.deepEqual(transportFigures(new Map()), {
    relayed: false, local_candidate: null, remote_candidate: null, bytes_sent: 0, bytes_received: 0, bytes_from: "none",
  });
});

// A text job peer to peer, as bim_node/p2p.py serves one: the prompt comes over the channel
// and is checked as the relay path checks it, the tokens stream to the user as `partial`
// frames (never to the registry), then the `result` frame, and the registry gets the commit.
describe("a peer-to-peer text job", () => {
  const MODEL = "ab".repeat(32);
  const loaded = { modelChecksum: MODEL, taskType: "text" };
  const PROMPT = { prompt: "Say hi in German.", max_tokens: 3 };
  const POLICY = {
    input: { max_chars: 200, blocked: [{ name: "example.weapons", patterns: ["\\bnerve agent\\b"] }] },
    output: { max_tokens: 5, max_chars: 4000 },
  };
  const GENERATED = { finish: "length", text: "Hallo, Welt", tokens: [11, 12, 13] };

  /** The contract of a text job its user declared `declared` for (hash and summary). */
  async function textContract(declared = PROMPT, changes = {}) {
    return {
      job_id: "0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b01", task_type: "text", model_checksum: MODEL,
      input_hash: await protocol.inputHash(declared), determinism: { seed: 0, temperature: 0, top_p: 1 },
      preprocessing: { max_new_tokens: 256, n_ctx: 2048 }, limits: { max_items: 1, max_chars: 2000 }, policy: POLICY,
      transport: "p2p", input_summary: { max_tokens: declared.max_tokens }, ...changes,
    };
  }

  async function textOffer(textC, assignmentId = "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908") {
    return {
      type: "job", assignment_id: assignmentId, job_id: textC.job_id, role: "A", transport: "p2p",
      contract: textC, contract_hash: await protocol.contractHash(textC), ice_servers: [], deadline: new Date(Date.now() + 60_000).toISOString(),
    };
  }

  async function refusal(promise) {
    try { await promise; } catch (err) { assert.ok(err instanceof jobs.JobRefused, String(err)); return err.reason; }
    return null;
  }

  /** A text engine that streams each token's text so far, `gapMs` apart. */
  const textEngine = (gapMs = 0) => ({
    taskType: "text",
    async generate(prompt, onToken) {
      let text = "";
      for (const [i, piece] of ["Hallo", ", ", "Welt"].entries()) {
        if (i) await sleep(gapMs);
        text += piece;
        onToken({ token: GENERATED.tokens[i], delta: piece, text, count: i + 1 });
      }
      assert.equal(prompt.max_tokens, 3);
      return GENERATED;
    },
  });

  function textSession(engine) {
    const socket = { readyState: 1, sent: [], send(text) { this.sent.push(JSON.parse(text)); } };
    const report = { view: { jobMark() {} }, log() {}, count() {}, computed() {}, peer: (f) => recorded.push(f) };
    const session = new Session(socket, { engine, report, onIdle() {}, store, RTCPeerConnectionImpl: ScriptedPeerConnection });
    return { session, socket };
  }

  test("the offer is taken; one the page cannot run deterministically is not", async () => {
    const job = await jobs.checkP2pOffer(await textOffer(await textContract()), loaded);
    assert.deepEqual([job.taskType, job.transport, job.inputs, job.items], ["text", "p2p", null, 1]);
    const sampled = await textContract(PROMPT, { determinism: { seed: 0, temperature: 0.7, top_p: 1 } });
    assert.equal(await refusal(jobs.checkP2pOffer(await textOffer(sampled), loaded)), "unsupported_contract");
    const noSummary = await textContract(PROMPT, { input_summary: { items: 1 } });
    assert.equal(await refusal(jobs.checkP2pOffer(await textOffer(noSummary), loaded)), "bad_message");
  });

  test("tokens stream to the user as partial frames, the result follows, the registry gets only the commit", async () => {
    const { session, socket } = textSession(textEngine(PARTIAL_INTERVAL_MS + 20));
    session.sessionKey = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"])).privateKey;
    const job = await jobs.checkP2pOffer(await textOffer(await textContract()), loaded);
    p2p = session.peerJobs; // closed by afterEach
    sent = socket.sent;
    p2p.offered(job, [], "all");
    const { framed } = await connected(job);
    await framed.send(...inputFrame(job, PROMPT));

    const frames = [];
    for (;;) {
      const message = await framed.receive(5000);
      frames.push(message);
      if (message.header.kind === "result") break;
    }
    const partials = frames.filter((m) => m.header.kind === "partial");
    assert.deepEqual(partials.map((m) => m.header), [
      { kind: "partial", text: "Hallo", tokens: 1 }, { kind: "partial", text: "Hallo, ", tokens: 2 }, { kind: "partial", text: "Hallo, Welt", tokens: 3 },
    ]);
    assert.ok(partials.every((m) => m.payload.length === 0));
    assert.equal(frames.at(-1), frames.find((m) => m.header.kind === "result"), "the result comes last");
    const result = frames.at(-1);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(result.payload)), GENERATED);
    assert.equal(await protocol.sha256Hex(result.payload), result.header.result_hash);
    assert.deepEqual(result.header.shape, [3]);
    assert.equal(result.header.encoding, "json");

    await until(() => socket.sent.some((m) => m.type === "result_commit"));
    const commit = socket.sent.find((m) => m.type === "result_commit");
    assert.equal(commit.result_hash, result.header.result_hash);
    assert.equal(commit.data, undefined);
    assert.equal(commit.size, result.payload.length);
    // The registry saw no text: no partial, no result with data.
    assert.deepEqual(socket.sent.filter((m) => m.type === "partial" || m.type === "result"), []);
    // Kept for the registry's upload: the contract's output rules make it ask for node A's text.
    const upload = p2p.onUploadRequest({ assignment_id: job.assignmentId, reason: "policy", with_inputs: false });
    assert.equal(upload.type, "result");
    assert.deepEqual(JSON.parse(Buffer.from(upload.data, "base64").toString()), GENERATED);
    assert.equal(upload.inputs, undefined);
  });

  test("partials are at most every PARTIAL_INTERVAL_MS; one too large for a header is left out", async () => {
    const job = await jobs.checkP2pOffer(await textOffer(await textContract()), loaded);
    p2p.offered(job, [], "all");
    const { framed } = await connected(job);
    await framed.send(...inputFrame(job, PROMPT));
    await until(() => queued.length === 1);
    let now = 0;
    const onToken = partialSender(queued[0], (m) => p2p.sendPartial(m), () => now);
    onToken({ text: "He", count: 1 });
    onToken({ text: "Hel", count: 2 }); // too soon
    now += PARTIAL_INTERVAL_MS;
    onToken({ text: "é".repeat(40_000), count: 3 }); // 80,000 bytes of UTF-8: no header holds it
    now += PARTIAL_INTERVAL_MS;
    onToken({ text: "Hello", count: 4 });
    const session = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"]);
    const { message, payload } = await jobs.signedResult(queued[0], GENERATED, session.privateKey, 5);
    await p2p.deliver(queued[0], message, payload);
    const kinds = [];
    for (;;) {
      const { header } = await framed.receive(1000);
      kinds.push(header.kind === "partial" ? header.text : header.kind);
      if (header.kind === "result") break;
    }
    assert.deepEqual(kinds, ["He", "Hello", "result"]);
    // A partial for a job without an open channel (its input came through the relay) goes nowhere.
    assert.equal(p2p.sendPartial({ type: "partial", assignment_id: "no-channel", job_id: job.jobId, text: "x", tokens: 1 }), false);
  });

  test("a bad prompt is refused with the relay path's reasons (bad_input for its form), to the user and the registry", async () => {
    const blocked = { prompt: "How is a nerve agent made?", max_tokens: 3 };
    const cases = [
      // [declared (the contract's hash and summary), sent, P2P reason, relay reason]
      [{ prompt: " \u3000\n", max_tokens: 3 }, null, "bad_input", "bad_message"],
      [{ prompt: `a${String.fromCharCode(0)}b`, max_tokens: 3 }, null, "bad_input", "bad_message"],
      [{ prompt: "Hi", max_tokens: 3, stop: ["\n"] }, null, "bad_input", "bad_message"],
      [{ prompt: "Hi", max_tokens: 257 }, null, "bad_input", "bad_message"],
      [{ prompt: "x".repeat(2001), max_tokens: 3 }, null, "bad_input", "bad_message"],
      [PROMPT, { prompt: "Say hi in French.", max_tokens: 3 }, "bad_input_hash", "bad_input_hash"],
      [blocked, null, "content_policy:example.weapons", "content_policy:example.weapons"],
      [{ prompt: "Count to six.", max_tokens: 6 }, null, "content_policy:output.max_tokens", "content_policy:output.max_tokens"],
    ];
    for (const [declared, sentInstead, reason, relayReason] of cases) {
      sent.length = 0;
      const declaredC = await textContract(declared);
      const offer = await textOffer(declaredC);
      // The relay path, given the same contract and inputs, refuses them for the same reason.
      const relay = { ...offer, contract: { ...declaredC } };
      delete relay.contract.transport;
      delete relay.contract.input_summary;
      relay.contract_hash = await protocol.contractHash(relay.contract);
      assert.equal(await refusal(jobs.checkJob({ ...relay, inputs: sentInstead ?? declared }, loaded)), relayReason, JSON.stringify(declared));

      const job = await jobs.checkP2pOffer(offer, loaded);
      p2p.offered(job, [], "all");
      const { framed } = await connected(job);
      await framed.send(...inputFrame(job, sentInstead ?? declared));
      assert.deepEqual((await framed.receive(1000)).header, { kind: "input_refused", reason }, JSON.stringify(declared));
      await until(() => sent.some((m) => m.type === "job_failed"));
      // The user's own input (the contract's hash) goes to the registry as evidence.
      const evidence = sentInstead ? {} : { inputs: declared };
      assert.deepEqual(sent.at(-1), { type: "job_failed", assignment_id: job.assignmentId, reason, ...evidence });
      assert.equal(queued.length, 0);
    }
  });

  test("the relay's job_inputs runs it as a relay job, whose partials go to the registry", async () => {
    const { session, socket } = textSession(textEngine());
    session.sessionKey = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"])).privateKey;
    const job = await jobs.checkP2pOffer(await textOffer(await textContract()), loaded);
    p2p = session.peerJobs;
    p2p.offered(job, [], "all");
    p2p.onJobInputs({ type: "job_inputs", job_id: job.jobId, assignment_id: job.assignmentId, inputs: PROMPT });
    await until(() => socket.sent.some((m) => m.type === "result"));
    assert.deepEqual(socket.sent.filter((m) => m.type === "partial").map((m) => m.text), ["Hallo"]);
    const result = socket.sent.find((m) => m.type === "result");
    assert.deepEqual(JSON.parse(Buffer.from(result.data, "base64").toString()), GENERATED);
    assert.equal(socket.sent.some((m) => m.type === "result_commit"), false);
  });
});
