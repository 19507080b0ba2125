// contributor/static/js/datachannel.js: the data channel framing of bim_core/peer.py
// (docs/p2p.md "Framing"): reassembly, the limits, malformed frames, and a FramedChannel
// pair exchanging messages with backpressure and failures.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { channelPair, until } from "./channels.mjs";
import { js } from "./helpers.mjs";

const dc = await import(js("datachannel.js"));
const { FrameError, FrameReader, FramedChannel, MAX_FRAME_BYTES, MAX_HEADER_BYTES } = dc;

const header = (fields) => JSON.stringify(fields);
const bytesOf = (n, seed = 7) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) % 251);

/** The FrameError code `fn` throws, or null. */
function codeOf(fn) {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FrameError, String(err));
    return err.code;
  }
  return null;
}

describe("FrameReader", () => {
  test("reassembles a message from its header and binary frames, and gives the header without size", () => {
    const reader = new FrameReader();
    const payload = bytesOf(40_000);
    assert.equal(reader.push(header({ kind: "input", job_id: "j", size: payload.length })), null);
    const frames = [payload.subarray(0, MAX_FRAME_BYTES), payload.subarray(MAX_FRAME_BYTES, 2 * MAX_FRAME_BYTES), payload.subarray(2 * MAX_FRAME_BYTES)];
    assert.equal(reader.push(frames[0].slice().buffer), null);
    assert.equal(reader.push(frames[1]), null); // a typed array passes too
    const message = reader.push(frames[2].slice().buffer);
    assert.deepEqual(message.header, { kind: "input", job_id: "j" });
    assert.deepEqual(message.payload, payload);
    assert.equal(reader.bytesReceived, header({ kind: "input", job_id: "j", size: payload.length }).length + payload.length);
  });

  test("a size 0 message is whole at its header, and messages follow one another", () => {
    const reader = new FrameReader();
    const first = reader.push(header({ kind: "input_refused", reason: "bad_input_hash", size: 0 }));
    assert.deepEqual(first, { header: { kind: "input_refused", reason: "bad_input_hash" }, payload: new Uint8Array(0) });
    assert.equal(reader.push(header({ kind: "result", size: 3 })), null);
    assert.deepEqual([...reader.push(Uint8Array.of(1, 2, 3)).payload], [1, 2, 3]);
    // Non-ASCII headers count in UTF-8 bytes, as Python's len(text.encode()).
    const reader2 = new FrameReader();
    reader2.push(header({ kind: "ü", size: 0 }));
    assert.equal(reader2.bytesReceived, new TextEncoder().encode(header({ kind: "ü", size: 0 })).length);
  });

  test("refuses what is too large: too_large", () => {
    const big = "x".repeat(MAX_HEADER_BYTES);
    assert.equal(codeOf(() => new FrameReader().push(header({ kind: "input", pad: big, size: 0 }))), "too_large");
    assert.equal(codeOf(() => new FrameReader({ maxMessageBytes: 1000 }).push(header({ kind: "input", size: 1001 }))), "too_large");
    // Two whole messages unread is the most a peer may leave; a third's announcement is refused.
    const reader = new FrameReader({ maxMessageBytes: 10 });
    for (let i = 0; i < 2; i++) {
      reader.push(header({ kind: "m", size: 10 }));
      assert.ok(reader.push(bytesOf(10)));
    }
    assert.equal(codeOf(() => reader.push(header({ kind: "m", size: 1 }))), "too_large");
    // Once the consumer reads one, there is room again.
    const reader2 = new FrameReader({ maxMessageBytes: 10 });
    for (let i = 0; i < 2; i++) { reader2.push(header({ kind: "m", size: 10 })); reader2.push(bytesOf(10)); }
    reader2.taken(10);
    assert.equal(codeOf(() => reader2.push(header({ kind: "m", size: 10 }))), null);
  });

  test("refuses malformed frames: bad_frame", () => {
    const cases = [
      ["not json", (r) => r.push("{kind: input}")],
      ["an array", (r) => r.push("[1, 2]")],
      ["null", (r) => r.push("null")],
      ["no kind", (r) => r.push(header({ size: 0 }))],
      ["kind not a string", (r) => r.push(header({ kind: 3, size: 0 }))],
      ["no size", (r) => r.push(header({ kind: "input" }))],
      ["size a string", (r) => r.push(header({ kind: "input", size: "3" }))],
      ["size negative", (r) => r.push(header({ kind: "input", size: -1 }))],
      ["size a fraction", (r) => r.push(header({ kind: "input", size: 1.5 }))],
      ["size a boolean", (r) => r.push(header({ kind: "input", size: true }))],
      ["bytes without a header", (r) => r.push(bytesOf(4))],
      ["a binary frame over 16 KiB", (r) => { r.push(header({ kind: "input", size: 20_000 })); r.push(bytesOf(MAX_FRAME_BYTES + 1)); }],
      ["more bytes than announced", (r) => { r.push(header({ kind: "input", size: 3 })); r.push(bytesOf(4)); }],
      ["a header while bytes are missing", (r) => { r.push(header({ kind: "input", size: 3 })); r.push(bytesOf(2)); r.push(header({ kind: "x", size: 0 })); }],
      ["neither text nor bytes", (r) => r.push({ size: 3 })],
    ];
    for (const [what, feed] of cases) assert.equal(codeOf(() => feed(new FrameReader())), "bad_frame", what);
  });
});

describe("FramedChannel", () => {
  test("a message crosses in frames of at most 16 KiB and arrives whole", async () => {
    const [a, b] = channelPair();
    const sender = new FramedChannel(a);
    const receiver = new FramedChannel(b);
    assert.equal(a.binaryType, "arraybuffer");
    const payload = bytesOf(100_000);
    await sender.send({ kind: "result", job_id: "j" }, payload);
    await sender.send({ kind: "note" });
    const first = await receiver.receive(1000);
    assert.deepEqual(first.header, { kind: "result", job_id: "j" });
    assert.deepEqual(first.payload, payload);
    assert.deepEqual((await receiver.receive(1000)).header, { kind: "note" });
    assert.equal(typeof a.sent[0], "string");
    assert.deepEqual(a.sent.slice(1, -1).map((f) => f.byteLength), [...Array(6).fill(MAX_FRAME_BYTES), 100_000 - 6 * MAX_FRAME_BYTES]);
    assert.equal(sender.bytesSent, receiver.bytesReceived);
    assert.equal(sender.bytesSent, a.sent.reduce((n, f) => n + (typeof f === "string" ? f.length : f.byteLength), 0));
  });

  test("send refuses misuse before sending anything", () => {
    const [a] = channelPair();
    const framed = new FramedChannel(a, { maxMessageBytes: 10 });
    assert.throws(() => framed.send({ kind: "x", size: 1 }), TypeError);
    assert.throws(() => framed.send({ reason: "no kind" }), TypeError);
    assert.equal(codeOf(() => framed.send({ kind: "x" }, bytesOf(11))), "too_large");
    assert.equal(codeOf(() => new FramedChannel(a).send({ kind: "x", pad: "y".repeat(MAX_HEADER_BYTES) })), "too_large");
    assert.equal(a.sent.length, 0);
  });

  test("a sender waits while over a MiB is queued and resumes on bufferedamountlow", async () => {
    const [a, b] = channelPair();
    const sender = new FramedChannel(a);
    const receiver = new FramedChannel(b);
    assert.equal(a.bufferedAmountLowThreshold, dc.BUFFER_LOW);
    a.bufferedAmount = dc.BUFFER_HIGH + 1;
    let done = false;
    const sending = sender.send({ kind: "result" }, bytesOf(3 * MAX_FRAME_BYTES)).then(() => { done = true; });
    await until(() => a.sent.length === 1);
    for (let i = 0; i < 50; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(a.sent.length, 1, "nothing more while the queue is full");
    assert.equal(done, false);
    a.bufferedAmount = 0;
    a.onbufferedamountlow();
    await sending;
    assert.equal(a.sent.length, 4);
    const message = await receiver.receive(1000);
    assert.equal(message.payload.length, 3 * MAX_FRAME_BYTES);
  });

  test("a bad frame fails the channel and closes it; whole messages before it are still read", async () => {
    const [a, b] = channelPair();
    const receiver = new FramedChannel(b);
    b.receive(header({ kind: "input", size: 2 }));
    b.receive(Uint8Array.of(1, 2).buffer);
    b.receive(bytesOf(3).buffer); // no header announced these
    assert.equal(b.closeCalls, 1);
    assert.deepEqual([...(await receiver.receive(1000)).payload], [1, 2]);
    await assert.rejects(receiver.receive(1000), (err) => err.code === "bad_frame");
    await assert.rejects(receiver.send({ kind: "result" }), (err) => err.code === "bad_frame");
    await until(() => a.readyState === "closed");
  });

  test("receive times out, and a closed channel fails what waits", async () => {
    const [a, b] = channelPair();
    const receiver = new FramedChannel(b);
    await assert.rejects(receiver.receive(20), (err) => err.code === "timeout");
    const waiting = receiver.receive(5000);
    a.close();
    await assert.rejects(waiting, (err) => err.code === "closed");
    await assert.rejects(new FramedChannel(a).send({ kind: "x" }), (err) => err.code === "closed");
  });
});

test("jsonFromBytes reads UTF-8 JSON and nothing else", () => {
  const utf8 = new TextEncoder();
  assert.deepEqual(dc.jsonFromBytes(utf8.encode('{"texts":["Grüße"]}')), { texts: ["Grüße"] });
  assert.equal(dc.jsonFromBytes(utf8.encode("{texts")), null);
  assert.equal(dc.jsonFromBytes(Uint8Array.of(0x7b, 0xff, 0x7d)), null); // not UTF-8
});
