/**
 * Throughput of JSON-schema-constrained generation against the same requests unconstrained
 * (issue 12: "JSON-schema requests at 64 concurrent streams: tokens/s against the same requests
 * unconstrained; goal within 5%"). In process, on the engine, so the HTTP layer (the same for
 * both) is left out: 64 sequences decode together, and decode tokens per second of decode steps
 * are compared. The constrained run masks and advances every row on the GPU each step; the
 * unconstrained run generates as many tokens per sequence (max_tokens = the constrained output's
 * length, min_tokens too, so both run the same steps on the same batch).
 *
 *     npx tsx bench/constraints_throughput.ts [--model FILE] [--streams 64] [--runs 3]
 *         [--json bench/results/constraints-throughput.json] [--markdown bench/results/constraints-throughput.md]
 */
import { compileGuide } from '../src/constraints/guide.ts';
import type { SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { Gpu } from '../src/gpu/gpu.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { writeResult } from './results.ts';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const streams = Number(arg('streams', '64'));
const runs = Number(arg('runs', '3'));
const jsonOut = arg('json', 'bench/results/constraints-throughput.json');
const mdOut = arg('markdown', 'bench/results/constraints-throughput.md');

const SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 12 }, age: { type: 'integer', minimum: 0, maximum: 120 }, city: { type: 'string', maxLength: 12 }, pets: { type: 'array', items: { enum: ['cat', 'dog', 'bird'] }, maxItems: 3 } },
  required: ['name', 'age', 'city'],
};

const gpu = await Gpu.open();
const source = await openModel(arg('model', DEFAULT_MODEL));
const model = GpuModel.load(gpu, source, { kvMemoryBytes: 64 << 20 });
const tok = source.tokenizer;
const prompts = Array.from({ length: streams }, (_, i) => tok.encode(`Person ${i}:`));
const t0 = performance.now();
const constraint = compileGuide({ kind: 'json_schema', schema: SCHEMA }, tok, false);
const compileMs = performance.now() - t0;
const base = (i: number): SamplingOptions => ({ maxTokens: 120, temperature: 1, topK: 0, topP: 1, seed: 1000 + i, stop: [] });

interface Run {
  constrained: boolean;
  tokens: number;
  decodeSeconds: number;
  tokensPerSecond: number;
}
const results: Run[] = [];
for (let r = 0; r < runs; r++) {
  const guided = await generate(model, tok, prompts.map((tokens, i) => ({ tokens, options: base(i), constraint })));
  const lengths = guided.results.map((x) => x.tokens.length);
  const plain = await generate(model, tok, prompts.map((tokens, i) => ({ tokens, options: { ...base(i), maxTokens: lengths[i], minTokens: lengths[i] } })));
  for (const [constrained, g] of [[true, guided], [false, plain]] as const) {
    const tokens = g.stats.generatedTokens;
    results.push({ constrained, tokens, decodeSeconds: g.stats.decodeSeconds, tokensPerSecond: tokens / g.stats.decodeSeconds });
  }
}
const mean = (constrained: boolean) => {
  const rs = results.filter((x) => x.constrained === constrained);
  return rs.reduce((a, x) => a + x.tokensPerSecond, 0) / rs.length;
};
const [withC, without] = [mean(true), mean(false)];
const report = { device: gpu.adapter.description, model: source.config, streams, runs, compileMs, states: constraint.states, edges: constraint.pairs.length / 2, results, constrainedTokensPerSecond: withC, unconstrainedTokensPerSecond: without, ratio: withC / without };
writeResult(jsonOut, JSON.stringify({ ...report, model: arg('model', DEFAULT_MODEL) }, null, 2) + '\n');
const md = [
  `${streams} concurrent streams, ${arg('model', 'stories260K (embedded)')}, ${gpu.adapter.description}; JSON schema of ${constraint.states} states / ${report.edges} edges compiled in ${compileMs.toFixed(0)} ms; ${runs} runs.`,
  '',
  '| run | constrained tok/s | unconstrained tok/s (same lengths) | ratio |',
  '|---:|---:|---:|---:|',
  ...Array.from({ length: runs }, (_, r) => {
    const [c, u] = [results[2 * r], results[2 * r + 1]];
    return `| ${r + 1} | ${c.tokensPerSecond.toFixed(1)} | ${u.tokensPerSecond.toFixed(1)} | ${(c.tokensPerSecond / u.tokensPerSecond).toFixed(3)} |`;
  }),
  `| mean | ${withC.toFixed(1)} | ${without.toFixed(1)} | ${(withC / without).toFixed(3)} |`,
].join('\n');
writeResult(mdOut, md + '\n');
console.log(md);
model.destroy();
gpu.destroy();
