// Greedy text generation as the text family defines it (docs/protocol.md §3, "Text";
// bim_core/runtimes/generator.py): the chat-templated prompt's token ids, greedy decoding
// under the contract's pinned parameters, the stop rule, and the result's bytes, namely
// {finish, text, tokens}, whose text is the tokens' text as the Python node renders it.
//
// Pure: the model is a parameter (./text-worker.js binds wllama to it; tests/js/ a fake),
// so the rules that decide the signed bytes are tested apart from any runtime:
//   model.tokenize(text, special) -> ids  (special: parse "<|im_start|>" as a token)
//   model.reset()                         (an empty context)
//   model.feed(ids)                       (decode; logits for the last one, n_batch at a time)
//   model.keep(n), model.cached: ids      (optional: cut the context to its first n ids; the
//                                          ids it holds. With both, the template's head that
//                                          the last job left is not computed again: prefill)
//   model.next() -> {token, piece}        (the argmax of the last logits, lowest id on a tie;
//                                          piece: the token's bytes with special tokens rendered)
//   model.isStop(id), model.control: Set of ids rendered as no text, model.bos: id or -1

export const CHAT_TEMPLATE = "smollm2-chatml";
export const SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
export const FINISH_STOP = "stop";
export const FINISH_LENGTH = "length";
const SPACE = 0x20;

/** Why a contract's determinism cannot be honoured ("" when it can): greedy decoding only,
 * as generator.determinism_refusal says. */
export function determinismRefusal(determinism) {
  const d = determinism && typeof determinism === "object" ? determinism : {};
  const temperature = d.temperature ?? 0;
  const topP = d.top_p ?? 1;
  if (temperature !== 0 || topP !== 1) {
    return `only greedy decoding (temperature 0, top_p 1), not temperature ${temperature}, top_p ${topP}`;
  }
  return "";
}

/** The subnet's pinned generation settings from its manifest's `preprocessing`. */
export function generationSettings(preprocessing = {}) {
  const template = String(preprocessing.chat_template ?? CHAT_TEMPLATE);
  if (template !== CHAT_TEMPLATE) throw new Error(`chat template ${JSON.stringify(template)} is not supported (only ${JSON.stringify(CHAT_TEMPLATE)})`);
  const int = (value, fallback) => {
    const n = Number(value ?? fallback);
    if (!Number.isInteger(n) || n < 1) throw new Error(`preprocessing: ${JSON.stringify(value)} is not a positive integer`);
    return n;
  };
  return {
    nCtx: int(preprocessing.n_ctx, 1024),
    nBatch: int(preprocessing.n_batch, 512),
    seed: Number(preprocessing.seed ?? 0),
    systemPrompt: String(preprocessing.system_prompt ?? SYSTEM_PROMPT),
    maxNewTokens: int(preprocessing.max_new_tokens, 256),
  };
}

/** The chat-templated prompt, ending where the assistant's turn begins: template pieces
 * with special tokens parsed, the user's text without (a prompt holding "<|im_start|>" is
 * text, not a turn boundary), no BOS added. */
export async function promptTokens(model, prompt, systemPrompt = SYSTEM_PROMPT) {
  return (await templated(model, prompt, systemPrompt)).ids;
}

/** promptTokens' ids, and how many of them are the template's head (the system turn and
 * the user turn's opening): the same in every job of the subnet. */
async function templated(model, prompt, systemPrompt) {
  const head = await model.tokenize(`<|im_start|>system\n${systemPrompt}<|im_end|>\n<|im_start|>user\n`, true);
  const ids = [...head, ...(await model.tokenize(prompt, false)), ...(await model.tokenize("<|im_end|>\n<|im_start|>assistant\n", true))];
  return { ids, headLength: head.length };
}

/** A token's bytes as llama_token_to_piece(special=false) gives them: none for a control token. */
export function pieceBytes(model, token, piece) {
  return model.control.has(token) ? new Uint8Array(0) : piece;
}

/** The text of generated tokens (without the stop token) as the Python node decodes it:
 * the pieces' bytes joined, a leading space dropped when the first token is BOS
 * (llama-cpp-python's detokenize), invalid UTF-8 replaced by U+FFFD. */
export function tokensText(pieces, tokens, bos = -1) {
  let length = 0;
  for (const p of pieces) length += p.length;
  let bytes = new Uint8Array(length);
  let at = 0;
  for (const p of pieces) { bytes.set(p, at); at += p.length; }
  if (tokens.length > 0 && tokens[0] === bos && bytes[0] === SPACE) bytes = bytes.subarray(1);
  return new TextDecoder("utf-8", { fatal: false, ignoreBOM: true }).decode(bytes);
}

/**
 * Puts `ids` in the model's context, with the logits of the last one ready. A model that
 * can cut its context (`keep`, `cached`) keeps the longest prefix it already holds, up to
 * `maxKeep` ids, and feeds only the rest; at least the last id is fed, so its logits are
 * computed now. The kept entries are the ones a full pass would compute: each position's
 * keys and values depend on the ids before it only, and the CPU kernels compute each row
 * apart from its batch (measured in Chromium: the same tokens either way on 40 prompts of
 * 32 tokens). Returns how many ids were kept.
 */
export async function prefill(model, ids, { maxKeep = Infinity } = {}) {
  let keep = 0;
  if (typeof model.keep === "function" && Array.isArray(model.cached)) {
    const cached = model.cached;
    const limit = Math.min(cached.length, ids.length - 1, maxKeep);
    while (keep < limit && cached[keep] === ids[keep]) keep++;
  }
  if (keep > 0) await model.keep(keep);
  else await model.reset();
  await model.feed(keep > 0 ? ids.slice(keep) : ids);
  return keep;
}

/**
 * Greedy continuation of the chat-templated prompt: {finish, text, tokens, promptTokens,
 * timings: {tokenizeMs (the prompt's ids), promptMs (from there to the first token),
 * decodeMs (the tokens after it), reusedTokens (prompt ids kept in the context, see prefill)}}.
 * `onToken({token, delta, text, count})` after each token (the stop token's delta is empty),
 * for streaming; its text is unsigned, the result's is what the registry checks.
 */
export async function generate(model, { prompt, maxTokens, settings }, onToken = () => {}) {
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new Error("max_tokens must be a positive integer");
  const tokenizing = performance.now();
  const { ids, headLength } = await templated(model, prompt, settings.systemPrompt);
  const tokenizeMs = performance.now() - tokenizing;
  if (ids.length + maxTokens > settings.nCtx) {
    throw new Error(`${ids.length} prompt tokens + ${maxTokens} new ones exceed the context of ${settings.nCtx}`);
  }
  const started = performance.now();
  let firstAt = started;
  // Only the template's head is reused (every job's first ~30 ids, about half a short
  // prompt's pass): a job pays for its own text as on a fresh context, so a benchmark
  // repeating one prompt measures what a new job costs, not a cache hit.
  const reused = await prefill(model, ids, { maxKeep: headLength });
  const tokens = [];
  const pieces = [];
  const stream = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  let streamed = "";
  let finish = FINISH_LENGTH;
  for (;;) {
    const { token, piece } = await model.next();
    if (!tokens.length) firstAt = performance.now();
    tokens.push(token);
    const stop = model.isStop(token);
    const delta = stop ? "" : stream.decode(pieceBytes(model, token, piece), { stream: true });
    if (!stop) pieces.push(pieceBytes(model, token, piece));
    streamed += delta;
    onToken({ token, delta, text: streamed, count: tokens.length });
    if (stop) { finish = FINISH_STOP; break; }
    if (tokens.length >= maxTokens) break;
    await model.feed([token]);
  }
  const timings = { tokenizeMs, promptMs: firstAt - started, decodeMs: performance.now() - firstAt, reusedTokens: reused };
  return { finish, text: tokensText(pieces, tokens, model.bos), tokens, promptTokens: ids.length, timings };
}
