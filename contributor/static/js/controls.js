// The volunteer's controls, the ones BOINC and Folding@home taught people to expect: how
// many threads the model may use, pausing while this tab is hidden or the device runs on
// battery, and a daily limit on compute time; and the pause reasons they add up to. The
// node is paused while any reason holds and resumes only once every one has cleared, so
// showing the tab again cannot undo the person's own Pause, nor plugging in a laptop a
// limit reached today.
//
// Pure: the storage (localStorage in the page, a Map-backed fake in tests/js/) and the
// clock are parameters, and what the browser observes (visibility, battery) comes in
// through observe(). ./app.js wires the events and ./connection.js's pause()/resume().

export const SETTINGS_KEY = "bim.controls.v1";
export const COMPUTE_KEY = "bim.compute-today.v1";

/** Why the node may be paused, each as the page says it. "user" and "engine" are held and
 * released explicitly; the others follow from the settings and what the browser reports. */
export const PAUSE_REASONS = Object.freeze({
  user: "you paused",
  hidden: "this tab is hidden",
  battery: "this device runs on battery",
  cap: "today's compute limit is reached (it lifts at local midnight)",
  engine: "the engine is restarting",
});

export const MAX_DAILY_CAP_MINUTES = 24 * 60;
// More logical cores than any browser reports; a bigger stored figure is hostile.
const MAX_CORES = 1024;
const DAY_MS = 86_400_000;
const DAY_PATTERN = /^\d{4}-\d{2}-\d{2}$/;

/** The logical cores to offer, from navigator.hardwareConcurrency (which may be missing). */
export const coresOf = (hardwareConcurrency) =>
  Number.isInteger(hardwareConcurrency) && hardwareConcurrency >= 1 ? Math.min(hardwareConcurrency, MAX_CORES) : 1;

/** onnxruntime-web's own default, half the logical cores and at most 4: the model's threads
 * spin while they wait, so taking every core (the engine's default before) leaves none to
 * the page's own thread, the browser and whatever the person is doing. */
export const threadsDefault = (hardwareConcurrency) => Math.min(4, Math.ceil(coresOf(hardwareConcurrency) / 2));

export function settingsDefaults(hardwareConcurrency) {
  // Pause on battery as BOINC does by default; a hidden tab keeps computing, since leaving
  // the tab in the background is how most people contribute.
  return { threads: threadsDefault(hardwareConcurrency), pauseWhenHidden: false, pauseOnBattery: true, dailyCapMinutes: 0 };
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** An integer in [min, max] from a number or a numeric string (form inputs give strings);
 * anything else is `fallback`. Out-of-range numbers are clamped, not refused: a figure
 * stored on a machine with more cores still means "as many as you can". */
function integerIn(value, min, max, fallback) {
  const number = typeof value === "number" ? value : typeof value === "string" && value.trim() !== "" ? Number(value) : NaN;
  if (!Number.isFinite(number)) return fallback;
  return Math.min(max, Math.max(min, Math.round(number)));
}

/** Settings that are safe to use whatever `raw` holds (stored by an older page, edited by
 * hand, or from a machine with more cores): known fields only, each checked or defaulted. */
export function settingsClamp(raw, hardwareConcurrency) {
  const defaults = settingsDefaults(hardwareConcurrency);
  if (!isObject(raw)) return defaults;
  const flag = (name) => (typeof raw[name] === "boolean" ? raw[name] : defaults[name]);
  return {
    threads: integerIn(raw.threads, 1, coresOf(hardwareConcurrency), defaults.threads),
    pauseWhenHidden: flag("pauseWhenHidden"),
    pauseOnBattery: flag("pauseOnBattery"),
    dailyCapMinutes: integerIn(raw.dailyCapMinutes, 0, MAX_DAILY_CAP_MINUTES, defaults.dailyCapMinutes),
  };
}

/** The local calendar day of `date`, "YYYY-MM-DD": the daily limit follows the person's
 * midnight, not UTC's. */
export function localDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** Milliseconds from `date` to the next local midnight (a 23- or 25-hour day included). */
export const msUntilNextDay = (date) =>
  new Date(date.getFullYear(), date.getMonth(), date.getDate() + 1).getTime() - date.getTime();

// Storage may be missing, full, or refuse access (private modes, blocked cookies): the
// controls then work for this page's lifetime only.
function readJson(storage, key) {
  try {
    const text = storage?.getItem(key);
    return text == null ? null : JSON.parse(text);
  } catch {
    return null;
  }
}

function writeJson(storage, key, value) {
  try {
    storage?.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

/** Today's compute as stored, or zero when the stored figure is another day's or invalid. */
function computeLoad(raw, today) {
  if (!isObject(raw) || raw.day !== today || !DAY_PATTERN.test(raw.day)) return { day: today, ms: 0 };
  const ms = typeof raw.ms === "number" && Number.isFinite(raw.ms) ? Math.min(DAY_MS, Math.max(0, raw.ms)) : 0;
  return { day: today, ms };
}

export class VolunteerControls {
  /** `onChange(snapshot)` runs after every change of settings, reasons or today's compute. */
  constructor({ storage = null, hardwareConcurrency = 1, now = () => new Date(), onChange = () => {} } = {}) {
    this.storage = storage;
    this.cores = coresOf(hardwareConcurrency);
    this.now = now;
    this.onChange = onChange;
    this.settings = settingsClamp(readJson(storage, SETTINGS_KEY), this.cores);
    this.today = computeLoad(readJson(storage, COMPUTE_KEY), localDay(now()));
    this.held = new Set(); // the explicit reasons: "user", "engine"
    // What the browser reports: charging is null where it reports no battery.
    this.observed = { hidden: false, charging: null };
    this.reasons = this.reasonsNow();
  }

  get paused() { return this.reasons.length > 0; }

  get capMs() { return this.settings.dailyCapMinutes * 60_000; }

  get capReached() { return this.capMs > 0 && this.today.ms >= this.capMs; }

  /** The reasons that hold now, in PAUSE_REASONS order. */
  reasonsNow() {
    const { settings, observed } = this;
    const holds = {
      user: this.held.has("user"),
      hidden: settings.pauseWhenHidden && observed.hidden,
      battery: settings.pauseOnBattery && observed.charging === false,
      cap: this.capReached,
      engine: this.held.has("engine"),
    };
    return Object.keys(PAUSE_REASONS).filter((reason) => holds[reason]);
  }

  snapshot() {
    return {
      settings: { ...this.settings },
      reasons: [...this.reasons],
      paused: this.paused,
      day: this.today.day,
      computedTodayMs: this.today.ms,
      capMs: this.capMs,
      cores: this.cores,
    };
  }

  changed() {
    this.reasons = this.reasonsNow();
    this.onChange(this.snapshot());
  }

  /** Changes some settings (form values as strings are fine); returns the stored result. */
  update(changes) {
    this.settings = settingsClamp({ ...this.settings, ...(isObject(changes) ? changes : {}) }, this.cores);
    writeJson(this.storage, SETTINGS_KEY, this.settings);
    this.changed();
    return this.settings;
  }

  /** Holds or releases an explicit reason ("user": the Pause button; "engine": a restart). */
  hold(reason, holds) {
    if (reason !== "user" && reason !== "engine") throw new Error(`${reason} is not held by hand`);
    if (holds === this.held.has(reason)) return;
    if (holds) this.held.add(reason);
    else this.held.delete(reason);
    this.changed();
  }

  /** What the browser reports: {hidden: boolean} and/or {charging: boolean|null}. */
  observe(report) {
    if (typeof report?.hidden === "boolean") this.observed.hidden = report.hidden;
    if (report && "charging" in report) this.observed.charging = typeof report.charging === "boolean" ? report.charging : null;
    this.changed();
  }

  /** Counts compute time (a job's or a benchmark run's) against today's limit. */
  computeAdd(ms) {
    if (!(typeof ms === "number" && Number.isFinite(ms) && ms > 0)) return;
    this.rollover();
    this.today.ms = Math.min(DAY_MS, this.today.ms + ms);
    writeJson(this.storage, COMPUTE_KEY, this.today);
    this.changed();
  }

  /** Called at local midnight (and now and then, since timers sleep with the laptop): a
   * new day starts with no compute counted, which lifts a limit reached yesterday. */
  tick() {
    if (this.rollover()) this.changed();
  }

  rollover() {
    const day = localDay(this.now());
    if (day === this.today.day) return false;
    this.today = { day, ms: 0 };
    writeJson(this.storage, COMPUTE_KEY, this.today);
    return true;
  }

  msUntilNextDay() { return msUntilNextDay(this.now()); }
}
