// contributor/static/js/controls.js: the volunteer's settings as stored (and as hostile or
// stale storage may hold them), the pause reasons they add up to, and the daily limit that
// lifts at local midnight.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { js } from "./helpers.mjs";

const {
  COMPUTE_KEY, SETTINGS_KEY, VolunteerControls, localDay, msUntilNextDay, settingsClamp, settingsDefaults, threadsDefault,
} = await import(js("controls.js"));

/** localStorage's interface over a Map; `broken` makes every call throw, as a blocked or
 * full storage does. */
class FakeStorage {
  items = new Map();
  broken = false;
  getItem(key) { if (this.broken) throw new Error("SecurityError"); return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { if (this.broken) throw new Error("QuotaExceededError"); this.items.set(key, String(value)); }
  json(key) { return JSON.parse(this.items.get(key)); }
}

/** A clock the test moves: local time, as the person's day is. */
function clock(start) {
  const c = { at: new Date(start), now: () => new Date(c.at), advance(ms) { c.at = new Date(c.at.getTime() + ms); } };
  return c;
}

function controlsWith({ storage = new FakeStorage(), cores = 8, at = "2026-03-14T10:00:00", changes } = {}) {
  const time = clock(at);
  const controls = new VolunteerControls({ storage, hardwareConcurrency: cores, now: time.now, onChange: (s) => changes?.push(s) });
  return { controls, storage, time };
}

describe("settings", () => {
  test("default to half the cores (at most 4), pausing on battery, no hidden pause, no limit", () => {
    assert.deepEqual(settingsDefaults(8), { threads: 4, pauseWhenHidden: false, pauseOnBattery: true, dailyCapMinutes: 0 });
    assert.deepEqual([1, 2, 3, 4, 6, 16, 64].map(threadsDefault), [1, 1, 2, 2, 3, 4, 4]);
    // A browser that does not say how many cores it has gets one thread.
    for (const hostile of [undefined, null, 0, -4, 2.5, "8", NaN]) assert.equal(threadsDefault(hostile), 1, String(hostile));
  });

  test("hostile or stale stored values are clamped or defaulted, field by field", () => {
    const defaults = settingsDefaults(4);
    for (const raw of [null, undefined, 7, "x", [], [1, 2]]) assert.deepEqual(settingsClamp(raw, 4), defaults, JSON.stringify(raw));
    // Stored on a machine with more cores: as many as this one has.
    assert.equal(settingsClamp({ threads: 16 }, 4).threads, 4);
    assert.equal(settingsClamp({ threads: 0 }, 4).threads, 1);
    assert.equal(settingsClamp({ threads: -3 }, 4).threads, 1);
    assert.equal(settingsClamp({ threads: 2.6 }, 4).threads, 3);
    assert.equal(settingsClamp({ threads: "3" }, 4).threads, 3); // a form input's value
    for (const bad of ["", " ", "three", NaN, Infinity, null, true, {}, [3]]) {
      assert.equal(settingsClamp({ threads: bad }, 4).threads, defaults.threads, String(bad));
    }
    assert.equal(settingsClamp({ dailyCapMinutes: 10_000 }, 4).dailyCapMinutes, 1440);
    assert.equal(settingsClamp({ dailyCapMinutes: -1 }, 4).dailyCapMinutes, 0);
    assert.equal(settingsClamp({ dailyCapMinutes: "90" }, 4).dailyCapMinutes, 90);
    // Only booleans are booleans: "false" is a truthy string, not a choice.
    assert.equal(settingsClamp({ pauseOnBattery: "false" }, 4).pauseOnBattery, true);
    assert.equal(settingsClamp({ pauseWhenHidden: 1 }, 4).pauseWhenHidden, false);
    assert.equal(settingsClamp({ pauseWhenHidden: true }, 4).pauseWhenHidden, true);
    // Unknown fields (and prototype tricks) are not carried.
    const clamped = settingsClamp(JSON.parse('{"threads": 2, "__proto__": {"polluted": 1}, "extra": 5}'), 4);
    assert.deepEqual(Object.keys(clamped).sort(), ["dailyCapMinutes", "pauseOnBattery", "pauseWhenHidden", "threads"]);
    assert.equal({}.polluted, undefined);
  });

  test("persist in the storage and come back clamped on the next visit", () => {
    const { controls, storage } = controlsWith({ cores: 8 });
    assert.deepEqual(controls.update({ threads: "6", pauseWhenHidden: true, dailyCapMinutes: "30" }),
      { threads: 6, pauseWhenHidden: true, pauseOnBattery: true, dailyCapMinutes: 30 });
    assert.deepEqual(storage.json(SETTINGS_KEY), { threads: 6, pauseWhenHidden: true, pauseOnBattery: true, dailyCapMinutes: 30 });
    // The same profile on a machine with fewer cores.
    const again = new VolunteerControls({ storage, hardwareConcurrency: 2 });
    assert.deepEqual(again.settings, { threads: 2, pauseWhenHidden: true, pauseOnBattery: true, dailyCapMinutes: 30 });
  });

  test("a corrupt, blocked or missing storage leaves working defaults", () => {
    const storage = new FakeStorage();
    storage.items.set(SETTINGS_KEY, "{not json");
    storage.items.set(COMPUTE_KEY, '"a string"');
    const { controls } = controlsWith({ storage, cores: 4 });
    assert.deepEqual(controls.settings, settingsDefaults(4));
    assert.equal(controls.today.ms, 0);
    storage.broken = true;
    const blocked = new VolunteerControls({ storage, hardwareConcurrency: 4 });
    assert.deepEqual(blocked.update({ threads: 1 }).threads, 1); // kept for this page, not stored
    blocked.computeAdd(500);
    assert.equal(blocked.today.ms, 500);
    const none = new VolunteerControls();
    assert.deepEqual(none.settings, settingsDefaults(1));
    none.update({ dailyCapMinutes: 5 });
  });
});

describe("pause reasons", () => {
  test("paused while any reason holds; resuming needs every one cleared", () => {
    const changes = [];
    const { controls } = controlsWith({ changes });
    controls.update({ pauseWhenHidden: true });
    assert.equal(controls.paused, false);
    controls.hold("user", true);
    controls.observe({ hidden: true });
    assert.deepEqual(controls.reasons, ["user", "hidden"]);
    controls.observe({ hidden: false });
    assert.deepEqual(controls.reasons, ["user"]); // showing the tab does not undo the person's Pause
    assert.equal(controls.paused, true);
    controls.hold("user", false);
    assert.equal(controls.paused, false);
    assert.deepEqual(changes.at(-1).reasons, []);
    assert.equal(changes.at(-1).paused, false);
    assert.throws(() => controls.hold("hidden", true), /not held by hand/);
  });

  test("hidden and battery count only while their option is on", () => {
    const { controls } = controlsWith();
    controls.observe({ hidden: true, charging: false });
    assert.deepEqual(controls.reasons, ["battery"]); // pause on battery is the default
    controls.update({ pauseOnBattery: false });
    assert.deepEqual(controls.reasons, []);
    controls.update({ pauseWhenHidden: true });
    assert.deepEqual(controls.reasons, ["hidden"]);
    controls.update({ pauseOnBattery: true });
    controls.observe({ charging: true });
    assert.deepEqual(controls.reasons, ["hidden"]);
    // A browser that reports no battery never pauses for one.
    controls.observe({ charging: null, hidden: false });
    assert.deepEqual(controls.reasons, []);
    controls.observe({ charging: "no" });
    assert.equal(controls.observed.charging, null);
  });

  test("an engine restart holds its own reason beside the person's", () => {
    const { controls } = controlsWith();
    controls.hold("engine", true);
    controls.hold("user", true);
    controls.hold("engine", false);
    assert.deepEqual(controls.reasons, ["user"]);
  });
});

describe("the daily limit", () => {
  test("reaching it is a pause reason; raising or removing it lifts it", () => {
    const { controls, storage } = controlsWith();
    controls.update({ dailyCapMinutes: 1 });
    controls.computeAdd(45_000);
    assert.equal(controls.paused, false);
    controls.computeAdd(15_000);
    assert.deepEqual(controls.reasons, ["cap"]);
    assert.deepEqual(storage.json(COMPUTE_KEY), { day: "2026-03-14", ms: 60_000 });
    controls.update({ dailyCapMinutes: 2 });
    assert.equal(controls.paused, false);
    controls.update({ dailyCapMinutes: 1 });
    assert.deepEqual(controls.reasons, ["cap"]);
    controls.update({ dailyCapMinutes: 0 });
    assert.equal(controls.paused, false);
    // Nonsense durations count for nothing.
    for (const bad of [-5, 0, NaN, Infinity, "100", null]) controls.computeAdd(bad);
    assert.equal(controls.today.ms, 60_000);
  });

  test("today's compute survives a reload, another day's does not count", () => {
    const storage = new FakeStorage();
    const first = controlsWith({ storage, at: "2026-03-14T10:00:00" }).controls;
    first.update({ dailyCapMinutes: 1 });
    first.computeAdd(61_000);
    const reloaded = controlsWith({ storage, at: "2026-03-14T23:00:00" }).controls;
    assert.equal(reloaded.today.ms, 61_000);
    assert.deepEqual(reloaded.reasons, ["cap"]); // paused from the start, before connecting
    const tomorrow = controlsWith({ storage, at: "2026-03-15T00:00:01" }).controls;
    assert.equal(tomorrow.today.ms, 0);
    assert.equal(tomorrow.paused, false);
    // Hostile counters: a huge figure is capped at one day, a negative one is nothing.
    storage.items.set(COMPUTE_KEY, JSON.stringify({ day: "2026-03-15", ms: 1e15 }));
    assert.equal(controlsWith({ storage, at: "2026-03-15T08:00:00" }).controls.today.ms, 86_400_000);
    storage.items.set(COMPUTE_KEY, JSON.stringify({ day: "2026-03-15", ms: -7 }));
    assert.equal(controlsWith({ storage, at: "2026-03-15T08:00:00" }).controls.today.ms, 0);
  });

  test("the counter resets at local midnight and the limit un-pauses by itself", () => {
    const changes = [];
    const { controls, time, storage } = controlsWith({ at: "2026-03-14T23:59:00", changes });
    controls.update({ dailyCapMinutes: 1 });
    controls.hold("user", false);
    controls.computeAdd(60_000);
    assert.deepEqual(controls.reasons, ["cap"]);
    assert.equal(controls.msUntilNextDay(), 60_000);
    controls.tick(); // still the same day: nothing changes
    assert.deepEqual(controls.reasons, ["cap"]);
    const before = changes.length;
    time.advance(60_000);
    controls.tick();
    assert.equal(controls.paused, false);
    assert.equal(changes.length, before + 1);
    assert.deepEqual(changes.at(-1).reasons, []);
    assert.deepEqual(storage.json(COMPUTE_KEY), { day: "2026-03-15", ms: 0 });
    // Compute after midnight counts toward the new day.
    controls.computeAdd(1000);
    assert.deepEqual(storage.json(COMPUTE_KEY), { day: "2026-03-15", ms: 1000 });
  });

  test("the other reasons still hold across midnight", () => {
    const { controls, time } = controlsWith({ at: "2026-03-14T23:59:30" });
    controls.update({ dailyCapMinutes: 1 });
    controls.computeAdd(90_000);
    controls.hold("user", true);
    time.advance(60_000);
    controls.tick();
    assert.deepEqual(controls.reasons, ["user"]);
  });
});

test("days are the person's local days, including the ones daylight saving shortens", () => {
  assert.equal(localDay(new Date(2026, 0, 5, 0, 0, 0)), "2026-01-05");
  assert.equal(localDay(new Date(2026, 11, 31, 23, 59, 59)), "2026-12-31");
  const evening = new Date(2026, 2, 14, 18, 30, 0);
  assert.equal(msUntilNextDay(evening), 5.5 * 3600_000);
  // Whatever the zone, the next day starts exactly at the local midnight after `date`.
  for (const date of [new Date(2026, 2, 29, 0, 30), new Date(2026, 9, 25, 0, 30), new Date(2026, 5, 1, 23, 59, 59, 999)]) {
    const next = new Date(date.getTime() + msUntilNextDay(date));
    assert.deepEqual([next.getHours(), next.getMinutes(), next.getSeconds()], [0, 0, 0]);
    assert.notEqual(localDay(next), localDay(date));
  }
});
