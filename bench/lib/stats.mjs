// Summary statistics and table formatting shared by the benchmark's report.

/** Nearest-rank percentile (the smallest sample with at least p% of samples at or below it); null for no samples. */
export function percentile(sorted, p) {
  if (!sorted.length) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

/** count, mean, p50, p90, p99, p99.9 and max of a list of numbers. */
export function summarize(values) {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  if (!n) return { n: 0, mean: null, p50: null, p90: null, p99: null, p999: null, max: null, min: null };
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n,
    min: sorted[0],
    mean: sum / n,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    p999: percentile(sorted, 99.9),
    max: sorted[n - 1],
  };
}

/** Rounds for JSON (sub-microsecond digits carry no information here). */
export const round = (v, digits = 3) => (v === null || v === undefined || !Number.isFinite(v) ? v ?? null : Number(v.toFixed(digits)));

export function roundDeep(obj, digits = 3) {
  if (typeof obj === 'number') return Number.isInteger(obj) ? obj : round(obj, digits);
  if (Array.isArray(obj)) return obj.map((v) => roundDeep(v, digits));
  if (obj && typeof obj === 'object') return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, roundDeep(v, digits)]));
  return obj;
}

/** A fixed-width text table; numbers and numeric-looking cells align right. */
export function table(headers, rows) {
  const cells = [headers, ...rows].map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))));
  const widths = headers.map((_, k) => Math.max(...cells.map((r) => r[k].length)));
  const numeric = (s) => /^[-+]?[\d.,]+( ?[a-zA-Z%/]+)?$|^-$/.test(s);
  const line = (r) => r.map((c, k) => (numeric(c) && k > 0 ? c.padStart(widths[k]) : c.padEnd(widths[k]))).join('  ');
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export const fmtMs = (v, digits = 2) => (v === null || v === undefined ? '-' : v.toFixed(digits));
export const fmtMB = (bytes) => (bytes === null || bytes === undefined ? '-' : (bytes / 1048576).toFixed(1));
