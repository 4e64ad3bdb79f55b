// Small helpers shared by the benchmark scripts: bounded concurrency, timeouts, port probes and the fake upstream's send stamps.
import net from 'node:net';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const note = (line) => process.stderr.write(`[bench] ${line}\n`);

/** Runs `fn` over `items` with at most `limit` in flight (upgrades and token mints are D1 round trips; 200 at once only measures queueing). */
export async function pool(items, limit, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++];
      await fn(item);
    }
  });
  await Promise.all(workers);
}

/** `promise`, or a rejection after `ms`; the timer is cleared either way so it holds no exit back. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function portListening(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const done = (v) => {
      sock.destroy();
      resolve(v);
    };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

// The fake upstream's `[[stamped]]` delta text: `<t=MS>`, MS = performance.timeOrigin + performance.now() when it was written.
const STAMP = /<t=(\d+(?:\.\d+)?)>/g;
export const stampsOf = (text) => (typeof text === 'string' ? [...text.matchAll(STAMP)].map((m) => Number(m[1])) : []);

