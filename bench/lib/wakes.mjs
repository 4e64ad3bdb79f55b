// Counts the events the runtime delivers to each Durable Object class of the gateway (construction, fetch, alarm, WebSocket message/close/error) and the Worker's own requests, with counting breakpoints on the generated glue set through the Worker's DevTools endpoint: no code in the gateway, nothing logged.
import { cdp } from './cdp.mjs';
import { findWorkerInspector } from './gateway.mjs';

// The glue worker-build generates: each exported class's methods call `<wasm>.<class>_<handler>(…)` once per event,
// and the Worker's fetch handler is `function(e){return X.call(this,e,this.env,this.ctx)}` (wrangler bundles the glue
// again, so spacing may differ). A conditional breakpoint on each of those calls counts into a global and never pauses.
const HANDLER = /\w+\.(connectionobject|conversationobject|ratelimit)_(new|fetch|alarm|webSocketMessage|webSocketClose|webSocketError)\(/g;
const WORKER_FETCH = /\w+\.call\(\s*this,\s*\w+,\s*this\.env,\s*this\.ctx\s*\)/g;
const CLASS_NAMES = { connectionobject: 'ConnectionObject', conversationobject: 'ConversationObject', ratelimit: 'RateLimit' };
const COUNTER = 'globalThis.__benchWakeCounts';

/** Line and column (0-based) of `offset` in `source`. */
function position(source, offset) {
  const before = source.slice(0, offset);
  const line = before.split('\n').length - 1;
  return { lineNumber: line, columnNumber: offset - (before.lastIndexOf('\n') + 1) };
}

/**
 * Attaches to the Worker's DevTools endpoint on one of `workerdPids` and puts a counting breakpoint on every
 * handler of the generated glue. `take()` returns the events since the previous `take()`, by class and handler.
 */
export async function startWakeCounter(workerdPids) {
  const target = await findWorkerInspector(workerdPids);
  if (!target) throw new Error("no DevTools endpoint of the Worker found on wrangler's workerd processes");
  const devtools = await cdp(target.url);
  const scripts = [];
  const contexts = [];
  devtools.on('Debugger.scriptParsed', (p) => scripts.push(p));
  devtools.on('Runtime.executionContextCreated', (p) => contexts.push(p.context));
  await devtools.send('Runtime.enable');
  await devtools.send('Debugger.enable');
  const breakpoints = [];
  for (const script of scripts) {
    if (!script.url || script.url.startsWith('wasm://')) continue;
    const { scriptSource: source } = await devtools.send('Debugger.getScriptSource', { scriptId: script.scriptId });
    if (!source.includes('conversationobject_')) continue;
    const sites = [
      ...[...source.matchAll(HANDLER)].map((m) => ({ offset: m.index, key: `${CLASS_NAMES[m[1]]}.${m[2] === 'new' ? 'constructor' : m[2]}` })),
      ...[...source.matchAll(WORKER_FETCH)].map((m) => ({ offset: m.index, key: 'Worker.fetch' })),
    ];
    for (const { offset, key } of sites) {
      const k = JSON.stringify(key);
      const condition = `(${COUNTER} = ${COUNTER} || {}, ${COUNTER}[${k}] = (${COUNTER}[${k}] || 0) + 1, false)`;
      const { breakpointId } = await devtools.send('Debugger.setBreakpoint', { location: { scriptId: script.scriptId, ...position(source, offset) }, condition });
      breakpoints.push({ key, breakpointId });
    }
  }
  if (!breakpoints.some((b) => b.key.startsWith('ConversationObject.'))) throw new Error("no handler of the generated glue found in the Worker's scripts: the glue changed shape");

  let last = {};
  async function take() {
    // workerd names no default context: the Worker's own is the one its scripts run in.
    const contextId = contexts[0]?.id;
    const { result } = await devtools.send('Runtime.evaluate', { expression: `JSON.stringify(${COUNTER} || {})`, returnByValue: true, contextId });
    const now = JSON.parse(result.value ?? '{}');
    const delta = {};
    for (const [key, n] of Object.entries(now)) if (n - (last[key] ?? 0)) delta[key] = n - (last[key] ?? 0);
    last = now;
    return delta;
  }

  await take();
  return {
    target,
    breakpoints: breakpoints.length,
    take,
    async stop() {
      await devtools.send('Debugger.disable').catch(() => {});
      devtools.close();
    },
  };
}

/** Sums a take() by class: `{ConversationObject: n, …}`. */
export function byClass(counts) {
  const out = {};
  for (const [key, n] of Object.entries(counts)) {
    const cls = key.split('.')[0];
    out[cls] = (out[cls] ?? 0) + n;
  }
  return out;
}
