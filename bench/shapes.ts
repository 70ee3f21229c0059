/** Transformer shapes of real models, used by kernel microbenchmarks and synthetic models. */
export interface ModelShape {
  name: string;
  dim: number;
  ffn: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocab: number;
  nLayers: number;
}

export const MODEL_SHAPES: Record<string, ModelShape> = {
  'stories260k': { name: 'stories260K', dim: 64, ffn: 172, nHeads: 8, nKvHeads: 4, headDim: 8, vocab: 512, nLayers: 5 },
  'llama-3.2-1b': { name: 'Llama-3.2-1B', dim: 2048, ffn: 8192, nHeads: 32, nKvHeads: 8, headDim: 64, vocab: 128256, nLayers: 16 },
  'llama-3-8b': { name: 'Llama-3-8B', dim: 4096, ffn: 14336, nHeads: 32, nKvHeads: 8, headDim: 128, vocab: 128256, nLayers: 32 },
  'qwen2.5-7b': { name: 'Qwen2.5-7B', dim: 3584, ffn: 18944, nHeads: 28, nKvHeads: 4, headDim: 128, vocab: 152064, nLayers: 28 },
};

/**
 * The shapes a benchmark run uses. On a software device (SwiftShader) full shapes take minutes per
 * kernel, so `reduced` runs the test model plus the real models scaled down by 8 in every width
 * (head dims kept), labelled as such in the results.
 */
export function benchShapes(scale: BenchScale): ModelShape[] {
  const real = [MODEL_SHAPES['llama-3.2-1b'], MODEL_SHAPES['llama-3-8b'], MODEL_SHAPES['qwen2.5-7b']];
  if (scale === 'full') return [MODEL_SHAPES['stories260k'], ...real];
  return [
    MODEL_SHAPES['stories260k'],
    ...real.map((s) => {
      // head counts shrink too, rounded to whole heads with the query heads a multiple of the KV heads
      const nKvHeads = Math.max(1, Math.round(s.nKvHeads / 8));
      return {
        ...s,
        name: `${s.name}/8 (reduced)`,
        dim: s.dim / 8,
        ffn: Math.round(s.ffn / 8),
        nHeads: Math.max(1, Math.round(s.nHeads / 8 / nKvHeads)) * nKvHeads,
        nKvHeads,
        vocab: Math.round(s.vocab / 8),
      };
    }),
  ];
}

export type BenchScale = 'full' | 'reduced';
