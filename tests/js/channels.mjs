// Two ends of an RTCDataChannel-shaped pipe for tests/js/: frames one end sends arrive at the
// other's onmessage on a later turn, in order, binary ones as an ArrayBuffer copy (as a
// browser delivers them with binaryType "arraybuffer"); close() closes both ends. The test
// sets bufferedAmount to make a sender wait, and fires onbufferedamountlow itself.

export class LoopChannel {
  readyState = "open";
  bufferedAmount = 0;
  bufferedAmountLowThreshold = 0;
  binaryType = "blob";
  sent = [];
  closeCalls = 0;
  other = null;

  constructor(label = "bim") { this.label = label; }

  send(frame) {
    if (this.readyState !== "open") throw new Error("InvalidStateError: the channel is not open");
    const copy = typeof frame === "string" ? frame : new Uint8Array(frame).slice().buffer;
    this.sent.push(copy);
    const other = this.other;
    setImmediate(() => { if (other.readyState === "open") other.onmessage?.({ data: copy }); });
  }

  /** Deliver a frame to this end as if the other end sent it (malformed ones included). */
  receive(frame) { this.onmessage?.({ data: frame }); }

  close() {
    this.closeCalls += 1;
    if (this.readyState === "closed") return;
    for (const end of [this, this.other]) {
      end.readyState = "closed";
      setImmediate(() => end.onclose?.());
    }
  }

  addEventListener(name, fn) { if (name === "open") this.onopenListener = fn; }
}

export function channelPair(label = "bim") {
  const a = new LoopChannel(label);
  const b = new LoopChannel(label);
  a.other = b;
  b.other = a;
  return [a, b];
}

/** Waits until `condition()` holds, turning the event loop (no timers: some tests mock them). */
export async function until(condition, what = String(condition)) {
  for (let i = 0; i < 20_000; i++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`never happened: ${what}`);
}
