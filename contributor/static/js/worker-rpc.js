// Requests to an engine's Web Worker and their answers, both sides of one message format, so
// the embedding/image engine (./engine.js, ./engine-worker.js) and the text engine
// (./text-engine.js, ./text-worker.js) share it rather than each keeping a copy:
//
//   page -> worker   {id, op, args}
//   worker -> page   {id, ok: true, result}
//                    {id, ok: false, message, error (the stack), code (err.code, if any)}
//                    {type: "progress", progress}          (not tied to a request)
//                    {type: <other>, id, ...}               (an event of request `id`,
//                                                            e.g. a streamed token)
//
// Pure: the worker is a parameter (anything with postMessage, onmessage, onerror and
// terminate), so this runs in the page, in a worker and under Node (tests/js/worker-rpc.test.mjs).

/**
 * The page's side: `call(op, args, onEvent)` posts a request and settles with its answer
 * (an error answer rejects with an Error carrying the worker's `code` and `workerStack`);
 * `onEvent(msg)` hears the request's own events until then. `onProgress(progress)` hears
 * progress messages. Errors name the engine (`name`): "<name> worker failed: ...",
 * "<name> closed". A worker error rejects every request in flight; after `close()` (which
 * asks the worker to run its "close" op, then terminates it) calls reject.
 */
export function workerClient(worker, { name = "engine", onProgress = () => {} } = {}) {
  const pending = new Map();
  let nextId = 1;
  let closed = false;
  const rejectAll = (error) => {
    for (const waiter of pending.values()) waiter.reject(error);
    pending.clear();
  };
  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === "progress") {
      try { onProgress(msg.progress); } catch (err) { console.error(err); }
      return;
    }
    const waiter = pending.get(msg.id);
    if (!waiter) return;
    if (msg.type !== undefined) {
      try { waiter.onEvent?.(msg); } catch (err) { console.error(err); }
      return;
    }
    pending.delete(msg.id);
    if (msg.ok) {
      waiter.resolve(msg.result);
      return;
    }
    const error = new Error(msg.message);
    error.workerStack = msg.error;
    if (msg.code) error.code = msg.code;
    waiter.reject(error);
  };
  worker.onerror = (event) => rejectAll(new Error(`${name} worker failed: ${event.message || "error"}`));

  function call(op, args = {}, onEvent = undefined) {
    if (closed) return Promise.reject(new Error(`${name} closed`));
    return new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject, onEvent });
      worker.postMessage({ id, op, args });
    });
  }

  async function close() {
    if (closed) return;
    try { await call("close", {}); } catch { /* terminating anyway */ }
    closed = true;
    worker.terminate();
    rejectAll(new Error(`${name} closed`));
  }

  /** Ends the worker at once (a failed start): no "close" op is asked for. */
  function terminate() {
    closed = true;
    worker.terminate();
    rejectAll(new Error(`${name} closed`));
  }

  return { call, close, terminate };
}

/**
 * The worker's side: answers each request with `handlers[op](args, id)`. A result holding
 * a typed array as `data` moves its buffer to the page rather than copying it. A thrown
 * error's message, stack and `code` go back as an error answer.
 */
export function workerServe(scope, handlers) {
  scope.onmessage = async (event) => {
    const { id, op, args } = event.data;
    try {
      if (!Object.hasOwn(handlers, op)) throw new Error(`unknown op ${op}`);
      const result = await handlers[op](args || {}, id);
      const transfer = result && ArrayBuffer.isView(result.data) ? [result.data.buffer] : [];
      scope.postMessage({ id, ok: true, result }, transfer);
    } catch (err) {
      scope.postMessage({
        id, ok: false, error: String(err && err.stack ? err.stack : err), message: String(err && err.message ? err.message : err), code: err?.code,
      });
    }
  };
}
