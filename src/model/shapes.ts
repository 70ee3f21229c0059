/**
 * Transformer shapes of real models: what kernel benchmarks, synthetic models and step-time cost
 * models need to know about a model without its file.
 */
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
  // too large for one 80 GB GPU at 16 bits: the simulator's placement search plans them over several
  'llama-3-70b': { name: 'Llama-3-70B', dim: 8192, ffn: 28672, nHeads: 64, nKvHeads: 8, headDim: 128, vocab: 128256, nLayers: 80 },
  'qwen2.5-72b': { name: 'Qwen2.5-72B', dim: 8192, ffn: 29568, nHeads: 64, nKvHeads: 8, headDim: 128, vocab: 152064, nLayers: 80 },
};

/** Full size, or every width scaled down by 8 (for software devices). */
export type ShapeScale = 'full' | 'reduced';

/**
 * A shape scaled down by 8 in every width, head dims kept, named "<name>/8 (reduced)". Head counts
 * shrink too, rounded to whole heads with the query heads a multiple of the KV heads.
 */
export function reducedShape(s: ModelShape): ModelShape {
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
}

/** A shape by MODEL_SHAPES key, case-insensitive, or undefined. */
export function findModelShape(name: string): ModelShape | undefined {
  const key = Object.keys(MODEL_SHAPES).find((k) => k.toLowerCase() === name.toLowerCase());
  return key ? MODEL_SHAPES[key] : undefined;
}
