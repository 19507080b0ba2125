// Messages on a job's WebRTC data channel, framed exactly as bim_core/peer.py frames them (its
// module docstring is normative, docs/p2p.md summarises it): one text frame, the header, a
// UTF-8 JSON object of at most 64 KiB with a string "kind" and a non-negative integer "size";
// then exactly "size" bytes in binary frames of at most 16 KiB. The receiver fails the
// channel on a frame that breaks this (`bad_frame`, `too_large`) and closes it; messages
// that were whole before the bad frame are still read first.
//
// Pure, like ./protocol.js: `FrameReader` is the reassembly alone, `FramedChannel` puts it on
// anything shaped like an RTCDataChannel (send, close, bufferedAmount, readyState, the
// onmessage/onclose/onbufferedamountlow handlers), so tests/js/ drives it under Node.

export const LABEL = "bim";
export const MAX_HEADER_BYTES = 64 * 1024;
export const MAX_FRAME_BYTES = 16 * 1024;
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
// A sender waits while more than BUFFER_HIGH bytes are queued and resumes below BUFFER_LOW,
// as bim_core/peer.py does: the link stays busy and memory stays bounded.
export const BUFFER_HIGH = 1024 * 1024;
export const BUFFER_LOW = 256 * 1024;

const utf8 = new TextEncoder();

/** Why a channel failed: bim_core.peer.PeerError's codes (`bad_frame`, `too_large`,
 * `closed`, `timeout`). */
export class FrameError extends Error {
  constructor(code, detail) { super(`${code}: ${detail}`); this.code = code; this.detail = detail; }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** Bytes of a binary frame as a Uint8Array: RTCDataChannel gives an ArrayBuffer with
 * binaryType "arraybuffer"; a typed array or Node's Buffer passes as it is. */
function frameBytes(frame) {
  if (frame instanceof ArrayBuffer) return new Uint8Array(frame);
  if (ArrayBuffer.isView(frame)) return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
  return null;
}

/** Reassembles messages from frames. `push(frame)` returns the message a frame completed,
 * `{header, payload}` (the header without its "size"), or null; it throws FrameError on a
 * frame that breaks the framing, after which the reader is dead. `taken(size)` tells it the
 * consumer read a message of that size: more than two messages' worth announced and unread
 * is refused (`too_large`), so a peer cannot fill memory faster than it is read. */
export class FrameReader {
  constructor({ maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES } = {}) {
    this.maxMessageBytes = maxMessageBytes;
    this.header = null;
    this.parts = [];
    this.missing = 0;
    this.unread = 0;
    this.bytesReceived = 0;
  }

  push(frame) {
    if (typeof frame === "string") return this.onHeader(frame);
    const bytes = frameBytes(frame);
    if (bytes === null) throw new FrameError("bad_frame", "a frame is text or binary (set binaryType to \"arraybuffer\")");
    return this.onBytes(bytes);
  }

  taken(size) { this.unread -= size; }

  onHeader(text) {
    const size = utf8.encode(text).length;
    this.bytesReceived += size;
    if (this.missing) throw new FrameError("bad_frame", `a header arrived with ${this.missing} announced bytes still missing`);
    if (size > MAX_HEADER_BYTES) throw new FrameError("too_large", `a ${size}-byte header is over ${MAX_HEADER_BYTES} bytes`);
    let header;
    try { header = JSON.parse(text); } catch { throw new FrameError("bad_frame", "a header is not JSON"); }
    if (!isObject(header) || typeof header.kind !== "string") {
      throw new FrameError("bad_frame", "a header is not a JSON object with a string 'kind'");
    }
    const announced = header.size;
    delete header.size;
    if (!Number.isSafeInteger(announced) || announced < 0) throw new FrameError("bad_frame", "a header has no non-negative integer 'size'");
    if (announced > this.maxMessageBytes) {
      throw new FrameError("too_large", `${announced} bytes announced, over the limit of ${this.maxMessageBytes}`);
    }
    if (this.unread + announced > 2 * this.maxMessageBytes) {
      throw new FrameError("too_large", "the peer sent more than two messages' worth that is still unread");
    }
    Object.assign(this, { header, parts: [], missing: announced });
    this.unread += announced;
    return announced === 0 ? this.deliver() : null;
  }

  onBytes(bytes) {
    this.bytesReceived += bytes.length;
    if (this.header === null) throw new FrameError("bad_frame", "a binary frame arrived without a header announcing it");
    if (bytes.length > MAX_FRAME_BYTES) throw new FrameError("bad_frame", `a ${bytes.length}-byte binary frame is over ${MAX_FRAME_BYTES} bytes`);
    if (bytes.length > this.missing) throw new FrameError("bad_frame", `${bytes.length} bytes arrived where ${this.missing} were announced`);
    // Copied: the channel may reuse or transfer the buffer it handed over.
    this.parts.push(bytes.slice());
    this.missing -= bytes.length;
    return this.missing === 0 ? this.deliver() : null;
  }

  deliver() {
    const total = this.parts.reduce((n, p) => n + p.length, 0);
    const payload = new Uint8Array(total);
    let at = 0;
    for (const part of this.parts) { payload.set(part, at); at += part.length; }
    const message = { header: this.header, payload };
    this.header = null;
    this.parts = [];
    return message;
  }
}

/** One end's messages on a data channel: `send(header, payload)` frames and sends (one
 * message at a time, waiting while the channel's queue is over BUFFER_HIGH), `receive(ms)`
 * gives the next whole message. The first failure (a bad frame, the channel closing,
 * `fail()`) is kept: receive() throws it once the messages before it are read, send()
 * throws it at once. A bad frame also closes the channel. */
export class FramedChannel {
  constructor(channel, { maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES } = {}) {
    this.channel = channel;
    this.maxMessageBytes = maxMessageBytes;
    this.reader = new FrameReader({ maxMessageBytes });
    this.inbox = [];
    this.waiters = [];
    this.failure = null;
    this.bytesSent = 0;
    this.sending = Promise.resolve();
    this.drained = null; // resolves when the queue falls below BUFFER_LOW, or on failure
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = BUFFER_LOW;
    channel.onmessage = (event) => this.onFrame(event.data);
    channel.onclose = () => this.fail(new FrameError("closed", "the data channel closed"));
    channel.onbufferedamountlow = () => this.wake();
  }

  get bytesReceived() { return this.reader.bytesReceived; }

  onFrame(frame) {
    if (this.failure) return;
    let message;
    try {
      message = this.reader.push(frame);
    } catch (err) {
      this.fail(err instanceof FrameError ? err : new FrameError("bad_frame", String(err?.message || err)));
      try { this.channel.close(); } catch { /* already closing */ }
      return;
    }
    if (message) this.put(message);
  }

  put(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.inbox.push(item);
  }

  /** Record the first failure and wake everything that waits; later ones change nothing. */
  fail(error) {
    if (this.failure) return;
    this.failure = error;
    this.wake();
    for (const waiter of this.waiters.splice(0)) waiter(error);
  }

  wake() {
    const drained = this.drained;
    this.drained = null;
    drained?.resolve();
  }

  /** The next whole message, {header, payload}; FrameError `timeout` after `timeoutMs`. */
  receive(timeoutMs) {
    if (this.inbox.length) return Promise.resolve(this.take(this.inbox.shift()));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const waiter = (item) => { clearTimeout(timer); if (item instanceof FrameError) reject(item); else resolve(this.take(item)); };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new FrameError("timeout", `no message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  take(message) {
    this.reader.taken(message.payload.length);
    return message;
  }

  /** Frame and send one message; resolves once its last frame is queued on the channel.
   * Local misuse (no string kind, a "size" in the header, a payload or header over the
   * limits) throws before anything is sent. */
  send(header, payload = new Uint8Array(0)) {
    if (!isObject(header) || typeof header.kind !== "string" || "size" in header) {
      throw new TypeError("a header is an object with a string 'kind' and no 'size' (send() writes it)");
    }
    if (payload.length > this.maxMessageBytes) {
      throw new FrameError("too_large", `${payload.length} bytes is over this end's limit of ${this.maxMessageBytes}`);
    }
    const text = JSON.stringify({ ...header, size: payload.length });
    const textBytes = utf8.encode(text).length;
    if (textBytes > MAX_HEADER_BYTES) throw new FrameError("too_large", `the header is over ${MAX_HEADER_BYTES} bytes`);
    // Chained: frames of two messages never interleave.
    const sent = this.sending.then(async () => {
      await this.sendFrame(text, textBytes);
      for (let start = 0; start < payload.length; start += MAX_FRAME_BYTES) {
        const frame = payload.subarray(start, start + MAX_FRAME_BYTES);
        await this.sendFrame(frame, frame.length);
      }
    });
    this.sending = sent.catch(() => {});
    return sent;
  }

  async sendFrame(frame, size) {
    if (this.failure) throw this.failure;
    if (this.channel.readyState !== "open") throw new FrameError("closed", "the data channel is not open");
    this.channel.send(frame);
    this.bytesSent += size;
    while (this.channel.bufferedAmount > BUFFER_HIGH) {
      // bufferedamountlow fires on the way down through BUFFER_LOW, which has to come after
      // this point since the amount is above BUFFER_HIGH now.
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      this.drained = { resolve };
      await promise;
      if (this.failure) throw this.failure;
    }
  }
}

/** The UTF-8 JSON a payload carries, or null when it is not UTF-8 JSON. */
export function jsonFromBytes(payload) {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch {
    return null;
  }
}
