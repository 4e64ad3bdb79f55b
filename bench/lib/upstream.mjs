// Starts the fake upstream thread and gives the benchmark a small promise API over it, plus a check that both threads' clocks agree.
import { Worker } from 'node:worker_threads';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';

export async function startUpstreamThread() {
  const worker = new Worker(new URL('./upstream-thread.mjs', import.meta.url));
  const pending = new Map();
  let nextId = 1;
  let failed = null;
  const ready = new Promise((resolve, reject) => {
    pending.set(0, resolve);
    worker.once('error', reject);
  });
  worker.on('message', ({ id, result }) => {
    const resolve = pending.get(id);
    pending.delete(id);
    resolve?.(result);
  });
  worker.on('error', (err) => {
    failed = err;
    for (const resolve of pending.values()) resolve(Promise.reject(err));
    pending.clear();
  });
  const call = (type, extra = {}) => {
    if (failed) return Promise.reject(failed);
    const id = nextId++;
    return new Promise((resolve) => {
      pending.set(id, resolve);
      worker.postMessage({ id, type, ...extra });
    });
  };
  const { url, port } = await ready;

  return {
    url,
    port,
    /** Summaries of the requests whose last user text contains `needle`. */
    requestsFor: (needle) => call('requests', { needle }),
    reset: () => call('reset'),
    /**
     * The upstream thread's clock minus this thread's, from the round trip with the smallest RTT
     * (stamps are compared across threads, so this must be ~0 for the latencies to mean anything).
     */
    async clockOffset(rounds = 25) {
      let best = null;
      for (let k = 0; k < rounds; k++) {
        const t0 = preciseNow();
        const remote = await call('clock');
        const t1 = preciseNow();
        const sample = { rttMs: t1 - t0, offsetMs: remote - (t0 + t1) / 2 };
        if (!best || sample.rttMs < best.rttMs) best = sample;
      }
      return best;
    },
    async close() {
      await call('close').catch(() => {});
      await worker.terminate();
    },
  };
}
