// Observes the harness's `wrangler dev` spawns (spawn time, child pid, port) and adjusts wrangler's environment per run, since the harness takes no env option.
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';

const require = createRequire(import.meta.url);
const childProcess = require('node:child_process');
const originalSpawn = childProcess.spawn;

let envTransform = (env) => env;
const listeners = new Set();

/** Sets a function that rewrites the env of the next `wrangler dev` spawns (not of `wrangler d1 ...`). */
export function setWranglerEnv(transform) {
  envTransform = transform;
}

/** Calls `fn({child, args, port, spawnedAt})` on each `wrangler dev` spawn; returns an unsubscribe function. */
export function onWranglerDev(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

const isWranglerDev = (command, args) =>
  typeof command === 'string' && /(^|[\\/])wrangler(\.js)?$/.test(command) && Array.isArray(args) && args[0] === 'dev';

childProcess.spawn = function spawn(command, args, options) {
  if (!isWranglerDev(command, args)) return originalSpawn.apply(this, arguments);
  const env = envTransform({ ...(options?.env ?? process.env) });
  // Taken just before the fork, so "spawn -> first 200" includes the whole process start.
  const spawnedAt = preciseNow();
  const child = originalSpawn.call(this, command, args, { ...options, env });
  const portAt = args.indexOf('--port');
  const port = portAt >= 0 ? Number(args[portAt + 1]) : null;
  for (const fn of listeners) fn({ child, args, port, spawnedAt });
  return child;
};
// The harness imported `spawn` as an ES binding of node:child_process; this re-points that live binding at the wrapper.
syncBuiltinESMExports();
