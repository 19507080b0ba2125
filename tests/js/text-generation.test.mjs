// contributor/static/js/text-generation.js with a scripted model: the prompt's token ids, the
// greedy loop's stop rule, and the result's text as the Python node renders it (control tokens
// without text, a leading space after BOS dropped, invalid UTF-8 replaced), streamed as it comes.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { js } from "./helpers.mjs";

const gen = await import(js("text-generation.js"));
const utf8 = new TextEncoder();

/** A model whose tokenizer maps each character to its code point (+1000 when special
 * parsing is on, so the test sees which pieces were parsed how) and whose "argmax" plays a
 * script of {token, bytes}. */
function scripted(script, { stops = [2], control = [1, 2], bos = 1 } = {}) {
  const calls = [];
  let step = 0;
  return {
    calls,
    control: new Set(control),
    bos,
    tokenize: async (text, special) => [...text].map((c) => c.codePointAt(0) + (special ? 1000 : 0)),
    reset: async () => { calls.push(["reset"]); step = 0; },
    feed: async (ids) => { calls.push(["feed", ids.length]); },
    next: async () => {
      const { token, bytes } = script[step++];
      return { token, piece: typeof bytes === "string" ? utf8.encode(bytes) : Uint8Array.from(bytes) };
    },
    isStop: (token) => stops.includes(token),
  };
}

const SETTINGS = gen.generationSettings({ n_ctx: 2048, n_batch: 512, max_new_tokens: 256 });

describe("promptTokens", () => {
  test("template pieces parse special tokens, the user's text does not", async () => {
    const model = scripted([]);
    const ids = await gen.promptTokens(model, "<|im_start|>hi", "sys");
    const head = [...`<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n`].map((c) => c.codePointAt(0) + 1000);
    const user = [..."<|im_start|>hi"].map((c) => c.codePointAt(0));
    const tail = [..."<|im_end|>\n<|im_start|>assistant\n"].map((c) => c.codePointAt(0) + 1000);
    assert.deepEqual(ids, [...head, ...user, ...tail]);
  });
});

describe("generate", () => {
  test("stops after the stop token, which is kept in tokens but not in the text", async () => {
    const model = scripted([{ token: 10, bytes: "Hel" }, { token: 11, bytes: "lo" }, { token: 2, bytes: "<|im_end|>" }, { token: 12, bytes: "never" }]);
    const seen = [];
    const out = await gen.generate(model, { prompt: "p", maxTokens: 8, settings: SETTINGS }, (t) => seen.push(t));
    assert.deepEqual({ finish: out.finish, text: out.text, tokens: out.tokens }, { finish: "stop", text: "Hello", tokens: [10, 11, 2] });
    assert.deepEqual(seen.map((t) => [t.token, t.delta, t.text, t.count]), [[10, "Hel", "Hel", 1], [11, "lo", "Hello", 2], [2, "", "Hello", 3]]);
    // The prompt once, then each generated token but the last, alone.
    assert.deepEqual(model.calls, [["reset"], ["feed", out.promptTokens], ["feed", 1], ["feed", 1]]);
  });

  test("stops at max_tokens with finish length", async () => {
    const model = scripted([{ token: 10, bytes: "a" }, { token: 11, bytes: "b" }, { token: 12, bytes: "c" }]);
    const out = await gen.generate(model, { prompt: "p", maxTokens: 2, settings: SETTINGS });
    assert.deepEqual([out.finish, out.text, out.tokens], ["length", "ab", [10, 11]]);
    assert.deepEqual(model.calls.at(-1), ["feed", 1]); // the last token is not fed
    // For measurements, not part of the result: the prompt's ids, the pass to the first token, the rest.
    assert.deepEqual(Object.keys(out.timings), ["tokenizeMs", "promptMs", "decodeMs", "reusedTokens"]);
    assert.ok(Object.values(out.timings).every((ms) => ms >= 0));
    assert.equal(out.timings.reusedTokens, 0, "a model without keep/cached starts from an empty context");
  });

  test("control tokens render as no text; a BOS first drops the leading space", async () => {
    const model = scripted([{ token: 1, bytes: "<|im_start|>" }, { token: 10, bytes: " Hi" }, { token: 5, bytes: "<|x|>" }, { token: 11, bytes: "!" }], { control: [1, 2, 5] });
    const out = await gen.generate(model, { prompt: "p", maxTokens: 4, settings: SETTINGS });
    assert.equal(out.text, "Hi!");
    // Not first: the space stays (llama-cpp-python strips it only after a leading BOS).
    const other = scripted([{ token: 10, bytes: " Hi" }, { token: 1, bytes: "<|im_start|>" }], { control: [1, 2] });
    assert.equal((await gen.generate(other, { prompt: "p", maxTokens: 2, settings: SETTINGS })).text, " Hi");
  });

  test("a character split across tokens is whole in the text and the stream; a cut one becomes U+FFFD", async () => {
    const rocket = [...utf8.encode("🚀")];
    const model = scripted([{ token: 10, bytes: rocket.slice(0, 2) }, { token: 11, bytes: rocket.slice(2) }, { token: 12, bytes: [0xc3] }]);
    const seen = [];
    const out = await gen.generate(model, { prompt: "p", maxTokens: 3, settings: SETTINGS }, (t) => seen.push(t.delta));
    assert.equal(out.text, "🚀\uFFFD");
    assert.deepEqual(seen, ["", "🚀", ""]);
  });

  test("refuses a prompt and max_tokens beyond the pinned context, before any pass", async () => {
    const model = scripted([]);
    const small = gen.generationSettings({ n_ctx: 80 });
    await assert.rejects(gen.generate(model, { prompt: "p".repeat(10), maxTokens: 8, settings: small }), /exceed the context of 80/);
    await assert.rejects(gen.generate(model, { prompt: "p", maxTokens: 0, settings: small }), /positive integer/);
    assert.deepEqual(model.calls, []);
  });
});

describe("pinned parameters", () => {
  test("only greedy decoding", () => {
    assert.equal(gen.determinismRefusal({ temperature: 0, top_p: 1, seed: 0 }), "");
    assert.equal(gen.determinismRefusal(undefined), "");
    assert.match(gen.determinismRefusal({ temperature: 0.7, top_p: 1 }), /only greedy decoding/);
    assert.match(gen.determinismRefusal({ temperature: 0, top_p: 0.9 }), /top_p 0.9/);
    assert.match(gen.determinismRefusal({ temperature: "0" }), /only greedy/);
  });

  test("the subnet's settings, with the Python node's defaults; another template is refused", () => {
    assert.deepEqual(gen.generationSettings({}), { nCtx: 1024, nBatch: 512, seed: 0, systemPrompt: gen.SYSTEM_PROMPT, maxNewTokens: 256 });
    assert.equal(gen.generationSettings({ n_ctx: 2048, system_prompt: "S" }).systemPrompt, "S");
    assert.throws(() => gen.generationSettings({ chat_template: "llama3" }), /not supported/);
    assert.throws(() => gen.generationSettings({ n_batch: 0 }), /positive integer/);
  });
});

describe("prefill", () => {
  /** A model that records its calls and holds its context's ids, as ./text-worker.js's does. */
  function caching() {
    const calls = [];
    let cached = [];
    return {
      calls,
      get cached() { return cached; },
      reset: async () => { calls.push(["reset"]); cached = []; },
      keep: async (n) => { calls.push(["keep", n]); cached = cached.slice(0, n); },
      feed: async (ids) => { calls.push(["feed", [...ids]]); cached = cached.concat(ids); },
    };
  }

  test("feeds only what follows the prefix the context already holds", async () => {
    const model = caching();
    assert.equal(await gen.prefill(model, [1, 2, 3, 4]), 0);
    await model.feed([9]); // a generated token, fed after the prompt
    assert.equal(await gen.prefill(model, [1, 2, 5]), 2);
    assert.deepEqual(model.calls, [["reset"], ["feed", [1, 2, 3, 4]], ["feed", [9]], ["keep", 2], ["feed", [5]]]);
    assert.deepEqual(model.cached, [1, 2, 5]);
  });

  test("the same prompt again still feeds its last id, so its logits are fresh", async () => {
    const model = caching();
    await gen.prefill(model, [1, 2, 3]);
    model.calls.length = 0;
    assert.equal(await gen.prefill(model, [1, 2, 3]), 2);
    assert.deepEqual(model.calls, [["keep", 2], ["feed", [3]]]);
  });

  test("nothing in common, or a model that cannot cut its context: an empty context first", async () => {
    const model = caching();
    await gen.prefill(model, [1, 2, 3]);
    model.calls.length = 0;
    assert.equal(await gen.prefill(model, [7, 2, 3]), 0);
    assert.deepEqual(model.calls, [["reset"], ["feed", [7, 2, 3]]]);

    const plain = scripted([]);
    await plain.feed([1, 2, 3]);
    assert.equal(await gen.prefill(plain, [1, 2, 3, 4]), 0);
    assert.deepEqual(plain.calls.slice(1), [["reset"], ["feed", 4]]);
  });

  test("generate keeps the template's head from the last job, and its result is the same", async () => {
    const script = [{ token: 10, bytes: "a" }, { token: 2, bytes: "" }];
    const expected = await gen.generate(scripted(script), { prompt: "second", maxTokens: 4, settings: SETTINGS });
    // The scripted model with a context: three jobs' worth of script.
    const model = scripted([...script, ...script, ...script]);
    let cached = [];
    const { feed, reset } = model;
    Object.defineProperty(model, "cached", { get: () => cached });
    model.feed = async (ids) => { await feed(ids); cached = cached.concat(ids); };
    model.reset = async () => { await reset(); cached = []; };
    model.keep = async (n) => { model.calls.push(["keep", n]); cached = cached.slice(0, n); };
    await gen.generate(model, { prompt: "first", maxTokens: 4, settings: SETTINGS });
    const again = await gen.generate(model, { prompt: "second", maxTokens: 4, settings: SETTINGS });
    const head = [...`<|im_start|>system\n${SETTINGS.systemPrompt}<|im_end|>\n<|im_start|>user\n`].length;
    assert.equal(again.timings.reusedTokens, head);
    assert.deepEqual(model.calls.filter((c) => c[0] !== "feed" || c[1] > 1).slice(-2), [["keep", head], ["feed", again.promptTokens - head]]);
    assert.deepEqual([again.finish, again.text, again.tokens], [expected.finish, expected.text, expected.tokens]);

    // The same prompt again (a benchmark's runs) keeps the head only: its own text is fed again.
    const third = await gen.generate(model, { prompt: "second", maxTokens: 4, settings: SETTINGS });
    assert.equal(third.timings.reusedTokens, head);
  });
});
