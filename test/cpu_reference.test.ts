import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { configFromGgufMetadata } from '../src/model/config.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import { readGguf, readTensorBytes } from '../src/model/gguf.ts';
import { openTokenizer } from '../src/model/source.ts';

// llama2.c's run.c (fp32, greedy) on stories260K for "Once upon a time", quoted in shared/models/README.md.
const REFERENCE =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily\'s mom said, "Lily, let\'s go to';

describe('float64 CPU forward pass (the oracle for the GPU model)', () => {
  it("reproduces llama2.c's greedy continuation of stories260K", async () => {
    const file = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
    const g = await readGguf(file);
    const cfg = configFromGgufMetadata(g.metadata, file);
    const weights: CpuWeights = new Map();
    for (const t of g.tensors.values()) {
      const bytes = readTensorBytes(g, t);
      weights.set(t.name, new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
    }
    const tok = await openTokenizer(file);
    const ids = tok.encode(REFERENCE);
    const promptLen = tok.encode('Once upon a time').length;
    const logits = cpuForward(cfg, weights, ids);
    // teacher forcing: from the end of the prompt on, each next reference token is the argmax
    for (let t = promptLen - 1; t < ids.length - 1; t++) {
      let best = 0;
      for (let v = 1; v < cfg.vocabSize; v++) if (logits[t][v] > logits[t][best]) best = v;
      expect(best, `position ${t}`).toBe(ids[t + 1]);
    }
  });
});
