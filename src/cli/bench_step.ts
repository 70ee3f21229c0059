import { Command, InvalidArgumentError, Option } from 'commander';
import { WEIGHT_FORMATS, type WeightFormat } from '../../kernels/weights.ts';
import { type DeviceMode, parseDeviceMode } from '../gpu/adapter.ts';
import { MODEL_SHAPES } from '../model/shapes.ts';

export interface BenchStepOptions {
  device: DeviceMode;
  models: string[];
  dtypes: WeightFormat[];
  batches: number[];
  scale: 'full' | 'reduced';
  /** layers built and run per model; 'auto': all on a GPU, 2 on a software device */
  layers: number | 'auto';
  /** prompt tokens prefilled per sequence first; 'auto': 128 on a GPU, none on a software device */
  context: number | 'auto';
  warmup: number;
  steps: number;
  recordRepeats: number;
  /** each step recorded before the previous one's ids are read back (as the engine pipelines) */
  pipeline: boolean;
  seed: number;
  json?: string;
  markdown?: string;
  trace?: string;
  updateDocs: boolean;
}

/** Layers measured on a software device: enough to separate per-layer from fixed figures. */
const SOFTWARE_LAYERS = 2;

export async function benchStep(o: BenchStepOptions) {
  const [{ Gpu }, bench, { updateDocSection, writeResult }, { mergeRunBlocks }] = await Promise.all([
    import('../gpu/gpu.ts'),
    import('../../bench/step.ts'),
    import('../../bench/results.ts'),
    import('../../bench/generate.ts'),
  ]);
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const soft = gpu.adapter.isSoftware;
    const context = o.context === 'auto' ? (soft ? 0 : 128) : o.context;
    console.error(`bench step on ${gpu.adapter.description}${soft ? ' (software device)' : ''}, ${o.scale} shapes, batch ${o.batches.join(',')}, context ${context}`);
    const runs = o.models.flatMap((model) =>
      o.dtypes.map((dtype) => ({
        model,
        dtype,
        scale: o.scale,
        layers: o.layers === 'auto' ? (soft ? SOFTWARE_LAYERS : undefined) : o.layers,
        batches: o.batches,
        context,
        warmup: o.warmup,
        steps: o.steps,
        recordRepeats: o.recordRepeats,
        pipeline: o.pipeline,
        seed: o.seed,
        log: (line: string) => console.error(line),
      })),
    );
    const report = await bench.runStepBench(gpu, runs, o.trace !== undefined);
    const markdown = bench.stepBenchMarkdown(report);
    const { trace, ...rest } = report;
    if (o.json) writeResult(o.json, JSON.stringify(rest, null, 2) + '\n');
    if (o.trace) writeResult(o.trace, JSON.stringify({ traceEvents: trace, displayTimeUnit: 'ms' }) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.updateDocs) {
      const blocks = report.runs.map((r) => ({ key: bench.stepRunKey(r), markdown: bench.stepRunMarkdown(report, r) }));
      updateDocSection(soft ? 'step-software' : 'step-gpu', (body) => mergeRunBlocks(body, blocks));
    }
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

const list =
  <T extends string>(name: string, allowed: readonly T[]) =>
  (v: string): T[] => {
    const items = v.split(',').map((s) => s.trim().toLowerCase()) as T[];
    const bad = items.filter((s) => !allowed.includes(s));
    if (bad.length || items.length === 0) throw new InvalidArgumentError(`${name}: ${bad.join(', ') || 'empty'} not one of ${allowed.join(', ')}`);
    return items;
  };
const count = (name: string, min: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};
const countOrAuto = (name: string, min: number) => (v: string) => (v === 'auto' ? 'auto' : count(name, min)(v));

/** `wgserve bench step`, added to the bench command by src/cli/main.ts. */
export function benchStepCommand(deviceOption: Option): Command {
  return new Command('step')
    .description('host cost of one steady-state decode step: dispatches, passes, submits, bind groups, buffers and writes created, recording time')
    .requiredOption('--synthetic <models>', `model shape(s), comma-separated: ${Object.keys(MODEL_SHAPES).join(', ')}`, list('--synthetic', Object.keys(MODEL_SHAPES)))
    .option('--dtype <formats>', `weight format(s), comma-separated: ${WEIGHT_FORMATS.join(', ')}`, list('--dtype', WEIGHT_FORMATS), ['q4_0'])
    .option('--batch <sizes>', 'batch sizes, comma-separated', (v) => v.split(',').map((s) => count('--batch', 1)(s.trim())), [1, 8, 32])
    .addOption(new Option('--scale <scale>', 'shapes: full, or reduced (width / 8)').choices(['full', 'reduced']).default('full'))
    .option('--layers <n>', 'layers built and run (auto: all on a GPU, 2 on a software device; whole-model figures are extrapolated per layer)', countOrAuto('--layers', 1), 'auto')
    .option('--context <n>', 'prompt tokens prefilled per sequence before decoding (auto: 128 on a GPU, 0 on a software device)', countOrAuto('--context', 0), 'auto')
    .option('--warmup <n>', 'unmeasured decode steps first', count('--warmup', 0), 2)
    .option('--steps <n>', 'measured decode steps (medians reported)', count('--steps', 1), 3)
    .option('--record-repeats <n>', 'steps recorded and discarded for the host recording time (median)', count('--record-repeats', 0), 15)
    .option('--pipeline', "record each decode step before the previous step's ids are read back, feeding them on the GPU (as the engine does)", false)
    .option('--seed <s>', 'seed of the random weights and tokens', count('--seed', 0), 1)
    .addOption(deviceOption)
    .option('--json <file>', 'write the results as JSON')
    .option('--markdown <file>', 'write the results as markdown tables')
    .option('--trace <file>', 'write a Chrome trace-event JSON of the measured steps (host record, submit, GPU, read-back)')
    .option('--update-docs', "replace this run's tables in docs/benchmarks.md (the section for this device class)", false)
    .action(async (o: Omit<BenchStepOptions, 'device' | 'models' | 'dtypes' | 'batches'> & { device: string; synthetic: string[]; dtype: WeightFormat[]; batch: number[] }) => {
      const { device, synthetic, dtype, batch, ...rest } = o;
      await benchStep({ ...rest, device: parseDeviceMode(device), models: synthetic, dtypes: dtype, batches: batch });
    });
}
