// Waiting for a record (an upstream request, a tool call) that may not have arrived yet; shared by the loopback fakes.

/**
 * Waiters over a growing list of records. `notify()` after each change resolves the waiters
 * whose predicate now matches; `waitFor` rejects after `timeoutMs` listing what was seen.
 */
export function recordWaiters(records, { label, describe }) {
  const waiters = new Set();
  const notify = () => {
    for (const w of waiters) {
      const hit = records.find(w.match);
      if (hit) {
        waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve(hit);
      }
    }
  };
  const waitFor = (match, timeoutMs, what) =>
    new Promise((resolve, reject) => {
      const hit = records.find(match);
      if (hit) return resolve(hit);
      const w = { match, resolve };
      w.timer = setTimeout(() => {
        waiters.delete(w);
        const seen = records.map(describe).join('\n  ');
        reject(new Error(`${label}: no ${what} within ${timeoutMs} ms; seen:\n  ${seen || '(none)'}`));
      }, timeoutMs);
      waiters.add(w);
    });
  const clear = () => {
    for (const w of waiters) clearTimeout(w.timer);
    waiters.clear();
  };
  return { notify, waitFor, clear };
}
