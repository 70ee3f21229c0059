/**
 * Simulator plots as SVG: SLO attainment against request rate, one line per policy or placement,
 * with the attainment target drawn across. Vega-Lite compiled to Vega and rendered headlessly
 * (the `none` renderer's scenegraph serialised to SVG; text widths are estimated).
 */
import type { TopLevelSpec } from 'vega-lite';
import { writeSvgPlot } from '../util/output.ts';

export interface AttainmentSeries {
  /** legend label: a policy, a placement, or both */
  label: string;
  /** x: request rate (per GPU or whole cluster, as the axis title says); y: attainment in [0, 1] */
  points: { rate: number; attainment: number }[];
}

export function attainmentPlotSpec(series: readonly AttainmentSeries[], o: { title: string; xTitle: string; target?: number }): TopLevelSpec {
  const values = series.flatMap((s) => [...s.points].sort((a, b) => a.rate - b.rate).map((p) => ({ series: s.label, rate: p.rate, attainment: p.attainment })));
  if (values.length === 0) throw new Error('nothing to plot: no runs');
  const target = o.target ?? 0.9;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    background: 'white',
    width: 420,
    height: 260,
    layer: [
      {
        data: { values },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'rate', type: 'quantitative', title: o.xTitle },
          y: { field: 'attainment', type: 'quantitative', title: 'SLO attainment', scale: { domain: [0, 1] }, axis: { format: '%' } },
          color: { field: 'series', type: 'nominal', title: null },
        },
      },
      {
        data: { values: [{ y: target }] },
        mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' },
        encoding: { y: { field: 'y', type: 'quantitative' } },
      },
    ],
  } as TopLevelSpec;
}


/** Writes the attainment plot to `path` (directories created) and returns the SVG text. */
export async function writeAttainmentPlot(path: string, series: readonly AttainmentSeries[], o: { title: string; xTitle: string; target?: number }): Promise<string> {
  return writeSvgPlot(path, attainmentPlotSpec(series, o));
}

export interface LayoutBar {
  /** the layout (`1P(tp2)+2D`) */
  label: string;
  /** highest request rate per GPU meeting the target */
  ratePerGpu: number;
  /** the phase that limits it (bar colour) */
  limit: string;
}

/** Goodput per GPU of the layouts a placement search simulated, best at the top, coloured by what limits each. */
export function layoutPlotSpec(bars: readonly LayoutBar[], o: { title: string }): TopLevelSpec {
  if (bars.length === 0) throw new Error('nothing to plot: no layouts');
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    background: 'white',
    width: 420,
    height: { step: 16 },
    data: { values: bars.map((b) => ({ ...b })) },
    mark: 'bar',
    encoding: {
      y: { field: 'label', type: 'nominal', sort: '-x', title: null },
      x: { field: 'ratePerGpu', type: 'quantitative', title: 'highest rate per GPU at the attainment target (req/s)' },
      color: { field: 'limit', type: 'nominal', title: 'limited by' },
    },
  } as TopLevelSpec;
}

export async function writeLayoutPlot(path: string, bars: readonly LayoutBar[], o: { title: string }): Promise<string> {
  return writeSvgPlot(path, layoutPlotSpec(bars, o));
}
