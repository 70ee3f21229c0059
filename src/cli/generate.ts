import { SingleBar } from 'cli-progress';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import type { SamplingOptions } from '../engine/engine.ts';
import { generate } from '../engine/generate.ts';
import { compileGuide, type GuideSpec } from '../constraints/guide.ts';
import type { AnnAttentionOptions } from '../ann/ann_attention.ts';
import type { SubgroupMode } from '../../kernels/subgroups.ts';
import { type KvDtypeChoice, applySubgroups, kvDtypeFor } from '../engine/load.ts';
import { type HeadPatternCliOptions, headPatternFromOptions } from '../kv/head_pattern.ts';
import { GpuModel } from '../model/gpu_model.ts';
import { openModel } from '../model/source.ts';

export interface GenerateCliOptions {
  model?: string;
  tokenizer?: string;
  prompt: string;
  device: DeviceMode;
  kvMemory: number;
  /** head-wise KV (--head-pattern ...) */
  headwise?: HeadPatternCliOptions;
  /** decode attention with a key index (--ann, docs/ann.md) */
  ann?: AnnAttentionOptions;
  /** --kv-dtype */
  kvDtype?: KvDtypeChoice;
  /** --subgroups */
  subgroups?: SubgroupMode;
  sampling: SamplingOptions;
  /** structured output: --choice, --regex or --json-schema */
  guide?: GuideSpec;
}

/** Streams only the generated text to stdout; load time and speeds go to stderr. */
export async function generateCli(o: GenerateCliOptions): Promise<void> {
  const t0 = performance.now();
  const gpu = await Gpu.open({ mode: o.device });
  try {
    applySubgroups(gpu, o.subgroups);
    const source = await openModel(o.model ?? DEFAULT_MODEL, { tokenizer: o.tokenizer });
    const headPattern = headPatternFromOptions(o.headwise ?? {}, source.config);
    const bar = process.stderr.isTTY ? new SingleBar({ format: 'loading {bar} {percentage}% {value}/{total} MiB', stream: process.stderr, hideCursor: true }) : null;
    const mib = (b: number) => Math.round(b / 2 ** 20);
    const model = GpuModel.load(gpu, source, {
      kvMemoryBytes: o.kvMemory,
      headPattern,
      ann: o.ann,
      kvDtype: kvDtypeFor(gpu, o.kvDtype),
      onProgress: (done, total) => {
        if (!bar) return;
        if (done === 0 || !bar.getTotal()) bar.start(mib(total), 0);
        bar.update(mib(done));
      },
    });
    bar?.stop();
    const loadSeconds = (performance.now() - t0) / 1e3;
    const tokens = source.tokenizer.encode(o.prompt);
    const constraint = o.guide ? compileGuide(o.guide, source.tokenizer, tokens[tokens.length - 1] === source.tokenizer.vocab.bos) : undefined;
    const { stats } = await generate(model, source.tokenizer, [{ tokens, options: o.sampling, constraint }], {
      onText: (_, text) => process.stdout.write(text),
    });
    process.stdout.write('\n');
    const rate = (n: number, s: number) => (s > 0 ? (n / s).toFixed(1) : 'n/a');
    console.error(
      `load ${loadSeconds.toFixed(2)} s | prefill ${stats.promptTokens} tokens, ${rate(stats.promptTokens, stats.prefillSeconds)} tokens/s | ` +
        `decode ${stats.generatedTokens} tokens, ${rate(stats.generatedTokens, stats.decodeSeconds)} tokens/s | ${gpu.adapter.description}`,
    );
    model.destroy();
  } finally {
    gpu.destroy();
  }
}
