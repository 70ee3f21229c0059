import { type HeadwiseBenchOptions, type HeadwiseReport, headwiseMarkdown, runHeadwiseBench } from '../../bench/headwise.ts';
import { updateDocSection, writeResult } from '../../bench/results.ts';

export interface BenchHeadwiseOptions extends HeadwiseBenchOptions {
  json?: string;
  markdown?: string;
  updateDocs: boolean;
}

/** `wgserve bench headwise`: the memory side of head-wise KV (no device needed). */
export function benchHeadwise(o: BenchHeadwiseOptions): HeadwiseReport {
  const { json, markdown: md, updateDocs, ...options } = o;
  const report = runHeadwiseBench(options);
  const markdown = headwiseMarkdown(report);
  if (json) writeResult(json, JSON.stringify(report, null, 2) + '\n');
  if (md) writeResult(md, markdown);
  if (updateDocs) updateDocSection('headwise-software', () => `\n${markdown}`);
  if (!json && !md) process.stdout.write(markdown);
  for (const g of report.goals) console.error(`${g.what}: ${g.reduction.toFixed(2)}x (goal ${g.goal}x) ${g.met ? 'met' : 'NOT met'}`);
  return report;
}
