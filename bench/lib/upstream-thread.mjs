// Runs the shared fake upstream in its own thread, so its pacing and send stamps do not wait behind the benchmark client's socket work.
import { parentPort } from 'node:worker_threads';
import { preciseNow, startFakeUpstream } from '../../tests/support/fake-upstream.mjs';

const up = await startFakeUpstream();

// Only what the benchmark reads crosses the thread boundary (records also hold bodies and headers).
const summarize = (r) => ({
  path: r.path,
  status: r.sent.status,
  stream: r.body?.stream === true,
  lastUserText: r.lastUserText,
  receivedAt: r.receivedAt,
  connectionRequest: r.connectionRequest,
  finishedAt: r.finishedAt,
  closedAt: r.closedAt,
  closedByClient: r.closedByClient,
  complete: r.sent.complete,
  text: r.sent.text,
  deltaWrittenAt: r.sent.deltas.map((d) => d.at),
});

parentPort.on('message', async ({ id, type, needle }) => {
  let result = null;
  if (type === 'clock') result = preciseNow();
  else if (type === 'requests') result = up.requests.filter((r) => r.lastUserText.includes(needle)).map(summarize);
  else if (type === 'reset') up.reset();
  else if (type === 'close') await up.close();
  parentPort.postMessage({ id, result });
});

parentPort.postMessage({ id: 0, result: { url: up.url, port: up.port } });
