import type { BatchShape, CostModel } from '../../scheduler/cost_model.ts';
import { type ModelShape, findModelShape, MODEL_SHAPES } from '../../model/shapes.ts';

/** Peak rates and memory of one GPU (vendor datasheet figures, dense, no sparsity). */
export interface Hardware {
  name: string;
  /** HBM / GDDR bandwidth, bytes/s */
  memoryBandwidth: number;
  /** dense 16-bit tensor FLOP/s (fp32 accumulate) */
  flops: number;
  /** GPU memory, bytes */
  memoryBytes: number;
}

const GB = 1e9;
const TB = 1e12;

export const HARDWARE: Record<string, Hardware> = {
  // H100 SXM5 80 GB: 3.35 TB/s HBM3, 989 TFLOP/s dense BF16/FP16 tensor (1979 is the sparse figure)
  h100: { name: 'H100 SXM 80GB', memoryBandwidth: 3.35 * TB, flops: 989e12, memoryBytes: 80 * GB },
  // A100 SXM 80 GB: 2.0 TB/s HBM2e (2039 GB/s), 312 TFLOP/s dense BF16/FP16 tensor
  a100: { name: 'A100 80GB', memoryBandwidth: 2.0 * TB, flops: 312e12, memoryBytes: 80 * GB },
  // RTX 4090: 1008 GB/s GDDR6X, 24 GB. FLOPs: 165.2 TFLOP/s, the dense "FP16 tensor with FP32
  // accumulate" row of NVIDIA's Ada Lovelace architecture whitepaper (330.4 with sparsity); the
  // non-tensor FP32 rate is 82.6 TFLOP/s.
  rtx4090: { name: 'RTX 4090', memoryBandwidth: 1.008 * TB, flops: 165.2e12, memoryBytes: 24 * GB },
  // L4: 300 GB/s GDDR6, 24 GB, 121 TFLOP/s dense FP16/BF16 tensor (242 with sparsity)
  l4: { name: 'L4', memoryBandwidth: 300 * GB, flops: 121e12, memoryBytes: 24 * GB },
};

/** Bytes per weight of the GGUF formats wgserve reads (quantised blocks: 32 weights + scale). */
export const DTYPE_BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32 };

export interface AnalyticalOptions {
  /** bytes per weight (default 2: f16/bf16) */
  weightBytes?: number;
  /** bytes per KV cache element (default 2) */
  kvBytes?: number;
  /** GPUs one instance spans, tensor-parallel (default 1); all-reduce traffic is not modelled */
  tensorParallel?: number;
  /** fraction of peak bandwidth a kernel reaches (default 0.7) */
  bandwidthEfficiency?: number;
  /** fraction of peak FLOP/s a kernel reaches (default 0.5) */
  flopsEfficiency?: number;
  /** fixed cost per step: launches, sampling, scheduling, host work (default 1 ms) */
  stepOverheadSeconds?: number;
  /** fraction of GPU memory usable for weights + KV (default 0.9; the rest is activations, runtime) */
  memoryUtilisation?: number;
  /**
   * KV transfer link between instances, bytes/s per direction (default 25e9: about what PCIe 4.0
   * x16, 32 GB/s raw, delivers; NVLink between H100s would be ~450e9 per direction)
   */
  linkBytesPerSecond?: number;
  /** query rows per prefill-attention tile: how often a chunk re-reads its context's KV (default 128) */
  prefillQueryTile?: number;
}

/** Weights of a Llama-family model read by one forward pass, and its parameter count. */
export function modelWeights(s: ModelShape): { layerParams: number; headParams: number; totalParams: number } {
  const qDim = s.nHeads * s.headDim;
  const kvDim = s.nKvHeads * s.headDim;
  const perLayer = s.dim * qDim + 2 * s.dim * kvDim + qDim * s.dim + 3 * s.dim * s.ffn;
  const layerParams = perLayer * s.nLayers;
  const headParams = s.vocab * s.dim;
  // the token embedding is gathered (a few rows per step), not read whole; counted for memory only
  return { layerParams, headParams, totalParams: layerParams + 2 * headParams };
}

/** A breakdown of one step's estimate, for reports and tests. */
export interface StepEstimate {
  seconds: number;
  /** per part of the step: [memory seconds, compute seconds]; the part costs the larger */
  linear: [number, number];
  decodeAttention: [number, number];
  prefillAttention: [number, number];
  overhead: number;
}

export interface AnalyticalCostModel extends CostModel {
  readonly hardware: Hardware;
  readonly shape: ModelShape;
  estimate(b: BatchShape): StepEstimate;
  /** bytes of KV cache per token (all layers, K and V) */
  readonly kvBytesPerToken: number;
  readonly weightBytesTotal: number;
}

/**
 * A roofline step-time model: each part of a forward pass (the linear layers; decode attention;
 * prefill attention) costs max(bytes / effective bandwidth, FLOPs / effective FLOP rate), and the
 * step is their sum plus a fixed overhead (the parts run as separate kernels, one after another).
 *  - linear layers: every weight is read once per step, whatever the batch; 2 FLOPs per weight per
 *    token (the output head only for each sequence's last token: decode sequences + one row per step
 *    for prefill chunks, as BatchShape does not count chunks);
 *  - decode attention: each decoding sequence reads its whole KV (decodeContext tokens);
 *    4 FLOPs per (query head, context token, head-dim element) for QK and PV;
 *  - prefill attention: the same FLOPs over prefillAttention (query, key) pairs (BatchShape counts
 *    the causal square whole, as a tiled kernel without block skipping computes it); the chunk's
 *    context KV is re-read once per tile of `prefillQueryTile` query rows, and new KV is written.
 * Activations are small next to weights and KV and are not counted.
 */
export function analyticalCostModel(hardware: Hardware | string, shape: ModelShape | string, options: AnalyticalOptions = {}): AnalyticalCostModel {
  const hw = typeof hardware === 'string' ? HARDWARE[hardware.toLowerCase()] : hardware;
  if (!hw) throw new Error(`unknown hardware "${String(hardware)}" (known: ${Object.keys(HARDWARE).join(', ')})`);
  const s = typeof shape === 'string' ? findModelShape(shape) : shape;
  if (!s) throw new Error(`unknown model "${String(shape)}" (known: ${Object.keys(MODEL_SHAPES).join(', ')})`);
  const wBytes = options.weightBytes ?? 2;
  const kvBytes = options.kvBytes ?? 2;
  const tp = options.tensorParallel ?? 1;
  if (!(tp >= 1 && Number.isInteger(tp))) throw new RangeError(`tensorParallel must be a positive integer: ${tp}`);
  const bw = hw.memoryBandwidth * (options.bandwidthEfficiency ?? 0.7) * tp;
  const rate = hw.flops * (options.flopsEfficiency ?? 0.5) * tp;
  const overhead = options.stepOverheadSeconds ?? 1e-3;
  const link = options.linkBytesPerSecond ?? 25e9;
  const tile = options.prefillQueryTile ?? 128;

  const { layerParams, headParams, totalParams } = modelWeights(s);
  const weightBytesRead = (layerParams + headParams) * wBytes;
  const weightBytesTotal = totalParams * wBytes;
  const kvElementsPerToken = s.nLayers * 2 * s.nKvHeads * s.headDim;
  const kvBytesPerToken = kvElementsPerToken * kvBytes;
  const attnFlopsPerPair = 4 * s.nLayers * s.nHeads * s.headDim;
  const usable = hw.memoryBytes * tp * (options.memoryUtilisation ?? 0.9) - weightBytesTotal;
  const kvCapacityTokens = Math.max(0, Math.floor(usable / kvBytesPerToken));
  const roof = (bytes: number, flops: number): [number, number] => [bytes / bw, flops / rate];

  const estimate = (b: BatchShape): StepEstimate => {
    const tokens = b.prefillTokens + b.decodeSeqs;
    const headRows = b.decodeSeqs + (b.prefillTokens > 0 ? 1 : 0);
    const linear = tokens > 0 ? roof(weightBytesRead + tokens * kvBytesPerToken, 2 * layerParams * tokens + 2 * headParams * headRows) : ([0, 0] as [number, number]);
    const decodeAttention = roof(b.decodeContext * kvBytesPerToken, b.decodeContext * attnFlopsPerPair);
    const prefillAttention = roof((b.prefillAttention / tile) * kvBytesPerToken, b.prefillAttention * attnFlopsPerPair);
    const seconds = overhead + Math.max(...linear) + Math.max(...decodeAttention) + Math.max(...prefillAttention);
    return { seconds, linear, decodeAttention, prefillAttention, overhead };
  };

  const pct = (f: number) => `${Math.round(f * 100)}%`;
  return {
    hardware: hw,
    shape: s,
    kvBytesPerToken,
    weightBytesTotal,
    kvCapacityTokens,
    estimate,
    stepSeconds: (b) => estimate(b).seconds,
    kvTransferSeconds: (tokens) => (tokens * kvBytesPerToken) / link,
    describe: () =>
      `analytical roofline: ${s.name} on ${tp > 1 ? `${tp}x ` : ''}${hw.name}, ${wBytes} B/weight, ${kvBytes} B/KV element, ` +
      `${pct(options.bandwidthEfficiency ?? 0.7)} of ${(hw.memoryBandwidth / TB).toFixed(2)} TB/s, ${pct(options.flopsEfficiency ?? 0.5)} of ${(hw.flops / 1e12).toFixed(0)} TFLOP/s, ` +
      `${(overhead * 1e3).toFixed(2)} ms/step, KV ${kvCapacityTokens} tokens, link ${(link / GB).toFixed(0)} GB/s`,
  };
}
