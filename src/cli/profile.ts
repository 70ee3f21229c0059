import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { GpuModel } from '../model/gpu_model.ts';
import { type ShapeScale } from '../model/shapes.ts';
import { openModel } from '../model/source.ts';
import { type SyntheticDtype, syntheticModel } from '../model/synthetic.ts';
import { FittedCostModel, type FittedCostModelJson, TERMS, fitCostModel } from '../sim/cost/fitted.ts';
import { headwiseOf, kvCapacityTokens, profileSteps } from '../sim/profile.ts';
import type { BatchShape } from '../scheduler/cost_model.ts';
import type { ModelConfig } from '../model/config.ts';
import { blocksForBudget } from '../kv/paged_kv.ts';
import { type HeadPatternCliOptions, headPatternFromOptions } from '../kv/head_pattern.ts';
import { type HeadwiseLayout, describeLayout } from '../sim/headwise.ts';

export interface ProfileCliOptions {
  model?: string;
  tokenizer?: string;
  /** instead of a file: a synthetic model (random weights) in this MODEL_SHAPES shape */
  synthetic?: string;
  dtype: SyntheticDtype;
  /** synthetic shapes: full, reduced (width / 8), auto: reduced on a software device */
  scale: ShapeScale | 'auto';
  device: DeviceMode;
  out?: string;
  kvMemory: number;
  quick: boolean;
  repeats?: number;
  clock: 'auto' | 'gpu' | 'wall';
  /** KV transfer link, bytes/s per direction, stored in the profile for disaggregated serving */
  linkBandwidth: number;
  /** fit from a live server's recorded steps (`serve --record-steps`) instead of timing a grid */
  fromSteps?: string;
  /** head-wise KV (docs/headwise.md): time the model with this pattern and write its layout */
  headwise?: HeadPatternCliOptions;
}

/** Times forward passes over a grid of batch shapes, fits the step-time model, writes it as JSON. */
export async function profileCli(o: ProfileCliOptions): Promise<FittedCostModelJson> {
  const gpu = await Gpu.open({ mode: o.device });
  try {
    if (o.synthetic && o.model) throw new Error('--synthetic and --model: give one');
    const scale: ShapeScale = o.scale === 'auto' ? (gpu.adapter.isSoftware ? 'reduced' : 'full') : o.scale;
    const path = o.synthetic ? `${o.synthetic}-${scale}-${o.dtype}` : (o.model ?? DEFAULT_MODEL);
    const source = o.synthetic ? syntheticModel(o.synthetic, o.dtype, { scale }) : await openModel(path, { tokenizer: o.tokenizer });
    const headPattern = headPatternFromOptions(o.headwise ?? {}, source.config);
    const model = GpuModel.load(gpu, source, { kvMemoryBytes: o.kvMemory, headPattern });
    try {
      const c = model.config;
      const name = o.synthetic ? c.name : basename(path);
      const headwise = headwiseOf(model);
      console.error(`profiling ${name} on ${gpu.adapter.description}${o.quick ? ' (quick grid)' : ''}${headwise ? `, head-wise KV: ${describeLayout(headwise)}` : ''}`);
      const t0 = performance.now();
      const { samples, clock } = await profileSteps(model, {
        quick: o.quick,
        repeats: o.repeats,
        clock: o.clock,
        onCase: (done, total, s) => {
          const b = s.shape;
          console.error(
            `  [${done}/${total}] prefill ${b.prefillTokens} tok (attn ${b.prefillAttention}), decode ${b.decodeSeqs} seqs / ${b.decodeContext} ctx: ${(s.seconds * 1e3).toFixed(2)} ms`,
          );
        },
      });
      const defaultOut = `${o.synthetic ? path : basename(path).replace(/\.[^.]*$/, '')}.cost.json`;
      return writeFit(o, samples, clock, name, gpu.adapter.description, kvCapacityTokens(model), c, t0, defaultOut, headwise);
    } finally {
      model.destroy();
    }
  } finally {
    gpu.destroy();
  }
}

/** Fits the samples, writes the cost-model JSON and prints the coefficients and fit quality. */
function writeFit(
  o: ProfileCliOptions,
  samples: { shape: BatchShape; seconds: number }[],
  clock: NonNullable<FittedCostModelJson['clock']>,
  name: string,
  device: string,
  kvCapacityTokens: number,
  c: ModelConfig,
  t0: number,
  defaultOut: string,
  headwise?: HeadwiseLayout,
): FittedCostModelJson {
  const fit = fitCostModel(samples);
  const kvBytesPerToken = c.nLayers * 2 * c.nKvHeads * c.headDim * 4; // f32 KV pools
  const json: FittedCostModelJson = {
    kind: 'fitted',
    coefficients: fit.coefficients,
    kvCapacityTokens,
    kvTransferBytesPerSecond: o.linkBandwidth,
    kvBytesPerToken,
    device,
    model: name,
    fittedAt: new Date().toISOString(),
    r2: fit.r2,
    meanRelativeError: fit.meanRelativeError,
    clock,
    samples: samples.map(({ shape, seconds }) => ({ shape, seconds })),
    ...(headwise ? { headwise } : {}),
  };
  const out = o.out ?? defaultOut;
  const fitted = new FittedCostModel(json);
  fitted.save(out);
  const unit: Record<(typeof TERMS)[number], string> = {
    base: 's/step',
    prefillTokens: 's/prompt token',
    prefillAttention: 's/attention pair',
    decodeSeqs: 's/decode seq',
    decodeContext: 's/decode context token',
  };
  console.log(`step time = c0 + c1*prefillTokens + c2*prefillAttention + c3*decodeSeqs + c4*decodeContext (${samples.length} steps, ${clock} clock, ${((performance.now() - t0) / 1e3).toFixed(1)} s)`);
  TERMS.forEach((t, i) => console.log(`  c${i} ${t.padEnd(16)} ${fit.coefficients[t].toExponential(3)} ${unit[t]}`));
  console.log(`  R2 ${fit.r2.toFixed(4)}, mean relative error ${(fit.meanRelativeError * 100).toFixed(1)}%, max ${(fit.maxRelativeError * 100).toFixed(1)}%`);
  console.log(`  KV capacity ${json.kvCapacityTokens} tokens${headwise ? ` of the full cache; head-wise KV: ${describeLayout(headwise)}` : ''}; wrote ${out}`);
  return json;
}

/**
 * A cost model from a live server's own steps (`wgserve serve --record-steps FILE`): each step's
 * batch shape against its loop period, host work between steps included, which is what the
 * simulator's clock must advance per step. No GPU is needed; the model file gives the KV size.
 */
export async function profileFromSteps(o: ProfileCliOptions & { fromSteps: string }): Promise<FittedCostModelJson> {
  // the engine records attention over the whole context whatever the pattern: a fit would charge streaming heads for tokens they never read
  if (o.headwise?.headPattern) throw new Error('--from-steps fits the shapes the engine recorded, which count full attention: profile a head pattern by timing the grid (drop --from-steps)');
  const t0 = performance.now();
  const path = o.model ?? DEFAULT_MODEL;
  const source = await openModel(path, { tokenizer: o.tokenizer });
  const c = source.config;
  const samples = readFileSync(o.fromSteps, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { shape: BatchShape; periodSeconds: number; device?: string })
    .map((r) => ({ shape: r.shape, seconds: r.periodSeconds }));
  if (samples.length < 5) throw new Error(`${o.fromSteps}: ${samples.length} recorded steps; a fit needs at least 5`);
  const layout = { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: 16, bytesPerElement: 4 };
  const capacity = Math.floor(blocksForBudget(layout, o.kvMemory) / c.nKvHeads) * layout.blockSize;
  return writeFit(o, samples, 'engine', basename(path), `steps recorded in ${basename(o.fromSteps)}`, capacity, c, t0, `${basename(path).replace(/\.[^.]*$/, '')}.cost.json`);
}
