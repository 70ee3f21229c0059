/**
 * Plots of `bench serve` reports as SVG, through Vega-Lite compiled to Vega and rendered headlessly
 * (the `none` renderer's scenegraph serialised to SVG; no browser, no canvas: text widths are
 * estimated).
 *
 * - Several runs at different offered rates: latency against offered rate, one panel per metric
 *   (TTFT, TPOT, end-to-end; p50 / p90 / p99 lines), and achieved throughput against offered rate,
 *   in a 2 x 2 grid.
 * - One run (or runs without an offered rate): the latency CDF of each metric.
 */
import type { TopLevelSpec } from 'vega-lite';
import { writeSvgPlot } from '../src/util/output.ts';
import type { LatencyStats, RunReport } from './serve.ts';

type Row = Record<string, string | number>;

const METRICS = [
  { key: 'ttft', title: 'TTFT' },
  { key: 'tpot', title: 'TPOT' },
  { key: 'e2e', title: 'end-to-end latency' },
] as const;
const STATS = ['p50', 'p90', 'p99'] as const;

const xRate = (r: RunReport) => (r.offeredRate !== null && Number.isFinite(r.offeredRate) ? r.offeredRate : null);

/** True when the runs form a sweep that can be drawn against offered rate. */
export const isRateSweep = (runs: readonly RunReport[]) => runs.length >= 2 && runs.every((r) => xRate(r) !== null);

function linePanel(values: Row[], title: string, x: { field: string; title: string; type?: 'quantitative' }, y: { field: string; title: string }, color: { field: string; title: string } | null, step = false) {
  return {
    title,
    width: 220,
    height: 180,
    data: { values },
    mark: { type: 'line' as const, point: !step, interpolate: step ? ('step-after' as const) : ('linear' as const) },
    encoding: {
      x: { field: x.field, type: 'quantitative' as const, title: x.title, scale: { zero: step ? false : true } },
      y: { field: y.field, type: 'quantitative' as const, title: y.title },
      ...(color ? { color: { field: color.field, type: 'nominal' as const, title: color.title } } : {}),
    },
  };
}

/** The Vega-Lite spec for the runs (see the module comment). */
export function servePlotSpec(runs: readonly RunReport[], title: string): TopLevelSpec {
  if (runs.length === 0) throw new Error('nothing to plot: no runs');
  if (isRateSweep(runs)) {
    const panels = METRICS.map(({ key, title: name }) => {
      const values: Row[] = [];
      for (const r of runs) {
        const s = r[key] as LatencyStats | null;
        if (!s) continue;
        for (const stat of STATS) values.push({ rate: xRate(r)!, series: stat, ms: s[stat] });
      }
      return linePanel(values, `${name} (ms)`, { field: 'rate', title: 'offered rate (req/s)' }, { field: 'ms', title: 'ms' }, { field: 'series', title: 'series' });
    });
    const throughput: Row[] = runs.flatMap((r) => [
      { rate: xRate(r)!, series: 'achieved req/s', value: r.throughput.requestsPerSecond },
      { rate: xRate(r)!, series: 'offered req/s', value: xRate(r)! },
    ]);
    panels.push(linePanel(throughput, 'throughput (req/s)', { field: 'rate', title: 'offered rate (req/s)' }, { field: 'value', title: 'req/s' }, { field: 'series', title: 'series' }));
    // a 2 x 2 grid; one colour legend (p50 / p90 / p99, achieved / offered)
    return { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title, background: 'white', vconcat: [{ hconcat: panels.slice(0, 2) }, { hconcat: panels.slice(2) }] } as TopLevelSpec;
  }
  // latency CDFs, one line per run
  const label = (r: RunReport, i: number) =>
    r.arrivals === 'concurrency' ? `concurrency ${r.concurrency}` : r.offeredRate === null ? `run ${i + 1}` : `${r.offeredRate === Infinity ? 'inf' : +r.offeredRate.toPrecision(3)} req/s`;
  const panels = METRICS.map(({ key, title: name }) => {
    const values: Row[] = [];
    runs.forEach((r, i) => {
      const ms = r.perRequest
        .filter((q) => q.ok)
        .map((q) => q[key])
        .filter((v): v is number => v !== null && Number.isFinite(v))
        .map((v) => v * 1000)
        .sort((a, b) => a - b);
      ms.forEach((v, j) => values.push({ run: label(r, i), ms: v, fraction: (j + 1) / ms.length }));
    });
    return linePanel(values, `${name} CDF`, { field: 'ms', title: 'ms' }, { field: 'fraction', title: 'fraction of requests' }, { field: 'run', title: 'run' }, true);
  });
  return { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title, background: 'white', hconcat: panels } as TopLevelSpec;
}


/** Writes the plot of the runs to `path` (SVG) and returns the SVG text. */
export async function writeServePlot(path: string, runs: readonly RunReport[], title: string): Promise<string> {
  return writeSvgPlot(path, servePlotSpec(runs, title));
}
