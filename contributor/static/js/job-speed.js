// This browser's speed on real jobs, from the compute time of each (the model call alone:
// no queueing, signing or network), over the last jobs. It is the figure to set beside
// the benchmark's: the registry times the benchmark on its own clock, offer to answer, and
// routes by what it observes on real jobs (NodeSubnet.observed_items_per_s), which adds
// the wait in this browser's queue and the network to the compute counted here.
//
// Pure: runs under Node (tests/js/job-speed.test.mjs).

export const JOB_SPEED_WINDOW = 20;

export class JobSpeed {
  constructor({ window = JOB_SPEED_WINDOW } = {}) {
    this.window = Math.max(1, window | 0);
    this.jobs = []; // {texts, ms}, oldest first
  }

  /** One job's texts and compute milliseconds; nonsense (a clock that jumped) is dropped. */
  record(texts, ms) {
    if (!(Number.isInteger(texts) && texts > 0 && Number.isFinite(ms) && ms > 0)) return;
    this.jobs.push({ texts, ms });
    if (this.jobs.length > this.window) this.jobs.shift();
  }

  /** {jobs, texts, textsPerS} over the window: total texts over total compute time, so a
   * big job weighs as much as its texts. textsPerS is null before the first job. */
  summary() {
    const texts = this.jobs.reduce((sum, job) => sum + job.texts, 0);
    const ms = this.jobs.reduce((sum, job) => sum + job.ms, 0);
    return { jobs: this.jobs.length, texts, textsPerS: ms > 0 ? (texts * 1000) / ms : null };
  }
}
