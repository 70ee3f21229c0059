import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { setSubgroups } from '../kernels/subgroups.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, cpuLogits, relativeLogitError, roundingTolerance } from './helpers/logits.ts';
import { STORIES_PROMPT, continuesReference } from './helpers/stories.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
/** greedy decode steps after the prompt */
const STEPS = 20;

// The whole model with every kernel's subgroup variant (kernels/subgroups.ts set to `on` for the
// device), one decode step per token, the prompt's included (so the test compiles no prefill or
// sampling kernel: greedy is the argmax of each step's logits, on the CPU): the text must continue
// the prompt as llama2.c does, and every step's logits must match the float64 oracle over the same tokens within the f32 bound of
// test/helpers/logits.ts. Subgroup reductions change the order of a sum's additions, not their
// number, so the rounding count behind that bound (u·√N) is unchanged.
describe('the model with subgroup kernels', () => {
  const getGpu = useGpu({ own: true }); // its subgroup mode must not reach other files

  it(`greedy decode (${STEPS} steps) continues llama2.c's text; decode-step logits within the oracle bound`, async (ctx) => {
    const gpu = getGpu();
    if (!gpu.features.subgroups) ctx.skip();
    setSubgroups(gpu, 'on');
    const src = await openModel(STORIES);
    const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
    const vocab = src.config.vocabSize;
    const prompt = src.tokenizer.encode(STORIES_PROMPT);
    const tokens = [...prompt];
    const rows: Float32Array[] = [];
    for (let i = 0; i < prompt.length - 1 + STEPS; i++) {
      const step = gpu.step();
      const { logits } = model.forward(step, [{ seq: 0, tokens: [tokens[i]] }]);
      const read = step.readback(logits, 0, vocab * 4);
      await step.submit();
      const row = new Float32Array(await read);
      rows.push(row);
      if (i >= prompt.length - 1) tokens.push(row.indexOf(Math.max(...row)));
    }
    model.destroy();
    for (const shader of ['matmul_subgroup', 'rmsnorm_subgroup', 'attention_decode_subgroup']) expect(gpu.pipelines.compiledShaders).toContain(shader);
    expect(continuesReference(decode(src.tokenizer, tokens.slice(prompt.length), prompt[prompt.length - 1]))).toBe(true);
    const want = cpuLogits(src, tokens.slice(0, -1)); // every position but the last generated token's
    expect(relativeLogitError(rows, want)).toBeLessThan(roundingTolerance(src.config, tokens.length - 1, UNIT_ROUNDOFF.f32));
  });
});
