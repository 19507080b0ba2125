// contributor/static/js/job-speed.js: this browser's texts per second on real jobs.
import assert from "node:assert/strict";
import { test } from "node:test";

import { js } from "./helpers.mjs";

const { JobSpeed } = await import(js("job-speed.js"));

test("texts over compute time, nothing before the first job", () => {
  const speed = new JobSpeed();
  assert.deepEqual(speed.summary(), { jobs: 0, texts: 0, textsPerS: null });
  speed.record(2, 100);
  speed.record(3, 150);
  assert.deepEqual(speed.summary(), { jobs: 2, texts: 5, textsPerS: 20 });
});

test("only the last jobs count, and nonsense is dropped", () => {
  const speed = new JobSpeed({ window: 2 });
  speed.record(1, 1000); // a slow first job leaves the window
  speed.record(4, 100);
  speed.record(4, 100);
  assert.equal(speed.summary().textsPerS, 40);
  for (const [texts, ms] of [[0, 10], [-1, 10], [1.5, 10], [2, 0], [2, -5], [2, NaN], [2, Infinity], ["2", 10]]) speed.record(texts, ms);
  assert.deepEqual(speed.summary(), { jobs: 2, texts: 8, textsPerS: 40 });
});
