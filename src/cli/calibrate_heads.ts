import { SingleBar } from 'cli-progress';
import type { TopLevelSpec } from 'vega-lite';
import { type CalibrationOptions, calibrateHeads, type HeadScores } from '../kv/calibrate_heads.ts';
import { formatGates } from '../kv/head_pattern.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { openModel } from '../model/source.ts';
import { writeOutput, writeSvgPlot } from '../util/output.ts';

export interface CalibrateHeadsCliOptions extends CalibrationOptions {
  model?: string;
  tokenizer?: string;
  /** the pattern file (TSV) to write */
  out: string;
  /** heat-map SVG (default: beside --out, .svg) */
  report?: string;
}

/** `wgserve calibrate-heads`: copy scores of every KV head to a pattern file, a heat map and a table on stdout. */
export async function calibrateHeadsCli(o: CalibrateHeadsCliOptions): Promise<HeadScores> {
  const src = await openModel(o.model ?? DEFAULT_MODEL, { tokenizer: o.tokenizer });
  const modelPath = o.model ?? 'the embedded stories260K';
  const c = src.config;
  console.error(`calibrate-heads: ${modelPath}, ${c.nLayers} layers x ${c.nKvHeads} KV heads; ${o.samples} copy prompts of ${o.length} tokens (needle ${o.needle}), seed ${o.seed}, float64 CPU forward`);
  const bar = process.stderr.isTTY ? new SingleBar({ format: 'prompts {bar} {value}/{total} {eta_formatted}', stream: process.stderr, hideCursor: true }) : null;
  bar?.start(o.samples, 0);
  let scores: HeadScores;
  try {
    scores = calibrateHeads(src, o, (done) => bar?.update(done));
  } finally {
    bar?.stop();
  }
  const about = [
    `wgserve calibrate-heads: Retrieval Head copy score per KV head (best of its query heads), rows = layers, columns = KV heads`,
    `model ${modelPath}; ${o.samples} prompts of ${o.length} tokens, needle ${o.needle}, seed ${o.seed}; ${scores.steps} copy steps`,
    `copy scores are small: binarise with --retrieval-fraction rather than the 0.5 gate threshold`,
  ];
  writeOutput(o.out, formatGates(scores.kv, about));
  const svg = o.report ?? o.out.replace(/(\.tsv)?$/, '.svg');
  await writeSvgPlot(svg, heatMap(scores, modelPath));
  process.stdout.write(scoresMarkdown(scores));
  console.error(`wrote ${o.out} and ${svg}`);
  return scores;
}

/** Scores per layer (rows) and KV head: copy score, and the query heads' mean attention on the copied token. */
export function scoresMarkdown(s: HeadScores): string {
  const nKv = s.kv[0]?.length ?? 0;
  const group = (s.query[0]?.length ?? 0) / Math.max(1, nKv);
  const cell = (l: number, h: number) => `${s.kv[l][h].toFixed(3)} (${Math.max(...s.mass[l].slice(h * group, (h + 1) * group)).toFixed(3)})`;
  return [
    `Copy score per KV head (in parentheses: the highest mean attention probability on the copied token of its query heads), ${s.steps} copy steps`,
    '',
    `| layer | ${Array.from({ length: nKv }, (_, h) => `kv ${h}`).join(' | ')} |`,
    `|---:|${'---:|'.repeat(nKv)}`,
    ...s.kv.map((row, l) => `| ${l} | ${row.map((_, h) => cell(l, h)).join(' | ')} |`),
    '',
  ].join('\n');
}

function heatMap(s: HeadScores, model: string): TopLevelSpec {
  const values = s.kv.flatMap((row, layer) => row.map((score, head) => ({ layer, head, score })));
  const encoding = {
    x: { field: 'head', type: 'ordinal' as const, title: 'KV head' },
    y: { field: 'layer', type: 'ordinal' as const, title: 'layer' },
  };
  return {
    title: `copy score per KV head: ${model.split('/').pop()}`,
    data: { values },
    width: Math.max(120, 36 * (s.kv[0]?.length ?? 1)),
    height: Math.max(80, 22 * s.kv.length),
    layer: [
      { mark: 'rect', encoding: { ...encoding, color: { field: 'score', type: 'quantitative', title: 'copy score', scale: { scheme: 'viridis', domain: [0, Math.max(1e-9, ...values.map((v) => v.score))] } } } },
      { mark: { type: 'text', fontSize: 9, color: 'white' }, encoding: { ...encoding, text: { field: 'score', type: 'quantitative', format: '.2f' } } },
    ],
  };
}
