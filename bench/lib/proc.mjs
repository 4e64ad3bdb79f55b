// Reads /proc for what the runtime costs outside the runtime: wrangler's process tree, RSS and CPU time of its workerd processes, and machine-wide CPU.
import { readdirSync, readFileSync } from 'node:fs';

// Linux reports utime/stime in clock ticks (getconf CLK_TCK, 100 on every x86-64 kernel) and statm in pages (getconf PAGESIZE).
const CLK_TCK = 100;
const PAGE_BYTES = 4096;

export const ticksToMs = (ticks) => (ticks * 1000) / CLK_TCK;

/** pid, comm, ppid and CPU ticks of one process; null when it is gone. */
export function readStat(pid) {
  let s;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm may hold spaces and parentheses; it ends at the last ')'.
  const close = s.lastIndexOf(')');
  const comm = s.slice(s.indexOf('(') + 1, close);
  const f = s.slice(close + 2).split(' '); // f[0] is field 3 (state)
  return { pid, comm, ppid: Number(f[1]), cpuTicks: Number(f[11]) + Number(f[12]) };
}

/** CPU ticks of every live process, keyed by pid (two snapshots attribute a phase's CPU to processes). */
export function snapshotAll() {
  const out = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (st) out.set(st.pid, st);
  }
  return out;
}

/** The `limit` processes outside `ownPids` that used the most CPU between two snapshots. */
export function topForeign(before, after, ownPids, limit = 3) {
  const own = new Set(ownPids);
  const rows = [];
  for (const [pid, st] of after) {
    if (own.has(pid)) continue;
    const ms = ((st.cpuTicks - (before.get(pid)?.cpuTicks ?? 0)) * 1000) / CLK_TCK;
    if (ms > 0) rows.push({ pid, comm: st.comm, cpuMs: ms });
  }
  return rows
    .sort((a, b) => b.cpuMs - a.cpuMs)
    .slice(0, limit)
    .map((r) => ({ ...r, cmdline: cmdline(r.pid) }));
}

/** The first 120 characters of a process's command line (to tell which "node" it was); '' when gone. */
export function cmdline(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120);
  } catch {
    return '';
  }
}

/** Every live descendant of `rootPid` (not the root itself). */
export function descendants(rootPid) {
  const children = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (!st) continue;
    if (!children.has(st.ppid)) children.set(st.ppid, []);
    children.get(st.ppid).push(st);
  }
  const out = [];
  const queue = [rootPid];
  while (queue.length) {
    for (const st of children.get(queue.shift()) ?? []) {
      out.push(st);
      queue.push(st.pid);
    }
  }
  return out;
}

/** The processes of a wrangler dev tree: the root, its workerd runtimes and everything else (node, esbuild). */
export function wranglerTree(rootPid) {
  const root = readStat(rootPid);
  const all = [...(root ? [root] : []), ...descendants(rootPid)];
  return {
    all: all.map((p) => p.pid),
    workerd: all.filter((p) => p.comm === 'workerd').map((p) => p.pid),
    other: all.filter((p) => p.comm !== 'workerd').map((p) => ({ pid: p.pid, comm: p.comm })),
  };
}

/** Resident set size in bytes; 0 when the process is gone. */
export function rssBytes(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * PAGE_BYTES;
  } catch {
    return 0;
  }
}

/** User + system CPU milliseconds of all threads of `pid`; 0 when it is gone. */
export function cpuMs(pid) {
  const st = readStat(pid);
  return st ? (st.cpuTicks * 1000) / CLK_TCK : 0;
}

export const sumCpuMs = (pids) => pids.reduce((n, pid) => n + cpuMs(pid), 0);
export const sumRss = (pids) => pids.reduce((n, pid) => n + rssBytes(pid), 0);

/** Busy CPU milliseconds of the whole machine (all cores) since boot, from /proc/stat. */
export function machineBusyMs() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  // Fields: user nice system idle iowait irq softirq steal; idle and iowait are not busy.
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return ((user + nice + system + irq + softirq + steal) * 1000) / CLK_TCK;
}

/** Samples the summed RSS of `pids` every `intervalMs` and keeps the peak. */
export function startRssSampler(pids, intervalMs = 20) {
  let peak = sumRss(pids);
  let samples = 1;
  const timer = setInterval(() => {
    const v = sumRss(pids);
    samples++;
    if (v > peak) peak = v;
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const last = sumRss(pids);
      if (last > peak) peak = last;
      return { peakBytes: peak, lastBytes: last, samples: samples + 1 };
    },
  };
}
