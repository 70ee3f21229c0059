import type { BatchShape } from '../../scheduler/cost_model.ts';
import { type ModelShape, findModelShape, MODEL_SHAPES } from '../../model/shapes.ts';
import { type DegreeCosts, type Link, type Parallelism, type ParallelCostModel, checkDegree, degreeLabel, pipelineStep, powersOfTwo } from './parallel.ts';

/** Peak rates and memory of one GPU (vendor datasheet figures, dense, no sparsity), and its links. */
export interface Hardware {
  name: string;
  /** HBM / GDDR bandwidth, bytes/s */
  memoryBandwidth: number;
  /** dense 16-bit tensor FLOP/s (fp32 accumulate) */
  flops: number;
  /** GPU memory, bytes */
  memoryBytes: number;
  /** between GPUs of one node: tensor-parallel all-reduces, pipeline sends, KV inside a node */
  interconnect: Link;
  /** between nodes, per GPU: KV transfers across nodes */
  network: Link;
}

const GB = 1e9;
const TB = 1e12;

// Link latencies are assumptions of the order of a small NCCL collective (NVLink ~10 us, PCIe
// ~25 us) and of an RDMA send across nodes; bandwidths are per direction, per GPU.
const NVLINK4: Link = { name: 'NVLink 4', bytesPerSecond: 450 * GB, latencySeconds: 10e-6 }; // 900 GB/s both directions (H100 SXM)
const NVLINK3: Link = { name: 'NVLink 3', bytesPerSecond: 300 * GB, latencySeconds: 10e-6 }; // 600 GB/s both directions (A100 SXM)
const PCIE4: Link = { name: 'PCIe 4.0 x16', bytesPerSecond: 31.5 * GB, latencySeconds: 25e-6 };
const IB_NDR: Link = { name: 'InfiniBand NDR 400 Gb/s', bytesPerSecond: 50 * GB, latencySeconds: 5e-6 }; // one NIC per GPU (DGX H100)
const IB_HDR: Link = { name: 'InfiniBand HDR 200 Gb/s', bytesPerSecond: 25 * GB, latencySeconds: 5e-6 }; // one NIC per GPU (DGX A100)
const ETH_100G: Link = { name: '100 GbE', bytesPerSecond: 12.5 * GB, latencySeconds: 20e-6 };

export const HARDWARE: Record<string, Hardware> = {
  // H100 SXM5 80 GB: 3.35 TB/s HBM3, 989 TFLOP/s dense BF16/FP16 tensor (1979 is the sparse figure)
  h100: { name: 'H100 SXM 80GB', memoryBandwidth: 3.35 * TB, flops: 989e12, memoryBytes: 80 * GB, interconnect: NVLINK4, network: IB_NDR },
  // A100 SXM 80 GB: 2.0 TB/s HBM2e (2039 GB/s), 312 TFLOP/s dense BF16/FP16 tensor
  a100: { name: 'A100 80GB', memoryBandwidth: 2.0 * TB, flops: 312e12, memoryBytes: 80 * GB, interconnect: NVLINK3, network: IB_HDR },
  // RTX 4090: 1008 GB/s GDDR6X, 24 GB. FLOPs: 165.2 TFLOP/s, the dense "FP16 tensor with FP32
  // accumulate" row of NVIDIA's Ada Lovelace architecture whitepaper (330.4 with sparsity); the
  // non-tensor FP32 rate is 82.6 TFLOP/s. No NVLink: GPUs talk over PCIe.
  rtx4090: { name: 'RTX 4090', memoryBandwidth: 1.008 * TB, flops: 165.2e12, memoryBytes: 24 * GB, interconnect: PCIE4, network: ETH_100G },
  // L4: 300 GB/s GDDR6, 24 GB, 121 TFLOP/s dense FP16/BF16 tensor (242 with sparsity); PCIe only
  l4: { name: 'L4', memoryBandwidth: 300 * GB, flops: 121e12, memoryBytes: 24 * GB, interconnect: PCIE4, network: ETH_100G },
};

/** Bytes per weight of the GGUF formats wgserve reads (quantised blocks: 32 weights + scale). */
export const DTYPE_BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32 };

export interface AnalyticalOptions {
  /** bytes per weight (default 2: f16/bf16) */
  weightBytes?: number;
  /** bytes per KV cache element (default 2) */
  kvBytes?: number;
  /** GPUs each layer is split over (default 1): weights, FLOPs and KV heads divided, two all-reduces per layer over the interconnect */
  tensorParallel?: number;
  /** pipeline stages (default 1): layers divided, micro-batches through the stages (see pipelineStep) */
  pipelineParallel?: number;
  /** fraction of peak bandwidth a kernel reaches (default 0.7) */
  bandwidthEfficiency?: number;
  /** fraction of peak FLOP/s a kernel reaches (default 0.5) */
  flopsEfficiency?: number;
  /** fraction of a link's datasheet bandwidth that collectives and transfers reach (default 0.8) */
  linkEfficiency?: number;
  /** fixed cost per step: launches, sampling, scheduling, host work (default 1 ms) */
  stepOverheadSeconds?: number;
  /** fraction of each GPU's memory usable for weights + KV (default 0.9; the rest is activations, runtime) */
  memoryUtilisation?: number;
  /**
   * KV transfer link between instances, bytes/s per direction (default 25e9: about what PCIe 4.0
   * x16, 32 GB/s raw, delivers). The placement search with --gpus-per-node uses the hardware's
   * interconnect and network instead.
   */
  linkBytesPerSecond?: number;
  /** query rows per prefill-attention tile: how often a chunk re-reads its context's KV (default 128) */
  prefillQueryTile?: number;
}

const pct = (f: number) => `${Math.round(f * 100)}%`;

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

/** A breakdown of one pass's estimate (all pipeline stages in turn), for reports and tests. */
export interface StepEstimate {
  seconds: number;
  /** per part of the step: [memory seconds, compute seconds] on one GPU of a stage; the part costs the larger */
  linear: [number, number];
  decodeAttention: [number, number];
  prefillAttention: [number, number];
  /** tensor-parallel all-reduces: two per layer over the interconnect (0 at tp 1) */
  allReduce: number;
  overhead: number;
}

export interface AnalyticalCostModel extends ParallelCostModel {
  readonly hardware: Hardware;
  readonly shape: ModelShape;
  readonly options: AnalyticalOptions;
  /** one whole pass (pp = 1 pipelining aside); stepSeconds pipelines it over the stages */
  estimate(b: BatchShape): StepEstimate;
  /** bytes of KV cache per token (all layers, K and V) */
  readonly kvBytesPerToken: number;
  readonly weightBytesTotal: number;
  /** per GPU: weights held, and memory usable for weights + KV */
  readonly memory: { weightBytesPerGpu: number; usableBytesPerGpu: number };
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
 *
 * Tensor parallelism (tp GPUs) divides weights, FLOPs and query heads by tp and KV heads by
 * min(tp, KV heads) (beyond that KV heads are replicated), and adds two ring all-reduces of the
 * step's activations per layer: latency + 2 (tp - 1) / tp x tokens x dim x 2 B over the
 * interconnect. Pipeline parallelism (pp stages) holds 1/pp of the layers per GPU; `pipelineStep`
 * turns a pass into a step of micro-batches, each stage sending its micro-batch's activations to
 * the next. Memory per GPU: weights / (tp x pp), and the rest of `memoryUtilisation` x memory is
 * KV for 1/pp of the layers and 1/min(tp, KV heads) of the heads.
 */
export function analyticalCostModel(hardware: Hardware | string, shape: ModelShape | string, options: AnalyticalOptions = {}): AnalyticalCostModel {
  const hw = typeof hardware === 'string' ? HARDWARE[hardware.toLowerCase()] : hardware;
  if (!hw) throw new Error(`unknown hardware "${String(hardware)}" (known: ${Object.keys(HARDWARE).join(', ')})`);
  const s = typeof shape === 'string' ? findModelShape(shape) : shape;
  if (!s) throw new Error(`unknown model "${String(shape)}" (known: ${Object.keys(MODEL_SHAPES).join(', ')})`);
  const wBytes = options.weightBytes ?? 2;
  const kvBytes = options.kvBytes ?? 2;
  const parallel: Parallelism = { tp: options.tensorParallel ?? 1, pp: options.pipelineParallel ?? 1 };
  checkDegree(parallel, 'analytical cost model');
  const { tp, pp } = parallel;
  const kvShards = Math.min(tp, s.nKvHeads);
  const bw = hw.memoryBandwidth * (options.bandwidthEfficiency ?? 0.7);
  const rate = hw.flops * (options.flopsEfficiency ?? 0.5);
  const linkBw = hw.interconnect.bytesPerSecond * (options.linkEfficiency ?? 0.8);
  const overhead = options.stepOverheadSeconds ?? 1e-3;
  const link = options.linkBytesPerSecond ?? 25e9;
  const tile = options.prefillQueryTile ?? 128;
  const actBytes = 2; // 16-bit activations between GPUs

  const { layerParams, headParams, totalParams } = modelWeights(s);
  const weightBytesRead = (layerParams + headParams) * wBytes;
  const weightBytesTotal = totalParams * wBytes;
  const kvElementsPerToken = s.nLayers * 2 * s.nKvHeads * s.headDim;
  const kvBytesPerToken = kvElementsPerToken * kvBytes;
  const attnFlopsPerPair = 4 * s.nLayers * s.nHeads * s.headDim;
  const weightBytesPerGpu = weightBytesTotal / (tp * pp);
  const usableBytesPerGpu = hw.memoryBytes * (options.memoryUtilisation ?? 0.9);
  const kvBytesPerTokenPerGpu = kvBytesPerToken / (kvShards * pp);
  const kvCapacityTokens = Math.max(0, Math.floor((usableBytesPerGpu - weightBytesPerGpu) / kvBytesPerTokenPerGpu));
  const roof = (bytes: number, flops: number): [number, number] => [bytes / bw, flops / rate];
  const kvRead = (tokens: number) => (tokens * kvBytesPerToken) / kvShards;

  const estimate = (b: BatchShape): StepEstimate => {
    const tokens = b.prefillTokens + b.decodeSeqs;
    const headRows = b.decodeSeqs + (b.prefillTokens > 0 ? 1 : 0);
    const linear = tokens > 0 ? roof(weightBytesRead / tp + kvRead(tokens), (2 * layerParams * tokens + 2 * headParams * headRows) / tp) : ([0, 0] as [number, number]);
    const decodeAttention = roof(kvRead(b.decodeContext), (b.decodeContext * attnFlopsPerPair) / tp);
    const prefillAttention = roof(kvRead(b.prefillAttention / tile), (b.prefillAttention * attnFlopsPerPair) / tp);
    const allReduce = tp > 1 && tokens > 0 ? s.nLayers * 2 * (hw.interconnect.latencySeconds + ((2 * (tp - 1)) / tp) * ((tokens * s.dim * actBytes) / linkBw)) : 0;
    const seconds = overhead + Math.max(...linear) + Math.max(...decodeAttention) + Math.max(...prefillAttention) + allReduce;
    return { seconds, linear, decodeAttention, prefillAttention, allReduce, overhead };
  };
  const hop = (tokens: number) => hw.interconnect.latencySeconds + (tokens * s.dim * actBytes) / linkBw;
  const pipeline = pipelineStep((b) => estimate(b).seconds, pp, hop);

  const degree = degreeLabel(parallel);
  return {
    hardware: hw,
    shape: s,
    options,
    parallel,
    kvBytesPerToken,
    weightBytesTotal,
    memory: { weightBytesPerGpu, usableBytesPerGpu },
    kvCapacityTokens,
    estimate,
    stepSeconds: pipeline.step,
    pipelineFillSeconds: pipeline.fill,
    kvTransferSeconds: (tokens) => (tokens * kvBytesPerToken) / link,
    describe: () =>
      `analytical roofline: ${s.name} on ${tp * pp > 1 ? `${tp * pp}x ` : ''}${hw.name}${degree ? ` (${degree}, ${hw.interconnect.name})` : ''}, ${wBytes} B/weight, ${kvBytes} B/KV element, ` +
      `${pct(options.bandwidthEfficiency ?? 0.7)} of ${(hw.memoryBandwidth / TB).toFixed(2)} TB/s, ${pct(options.flopsEfficiency ?? 0.5)} of ${(hw.flops / 1e12).toFixed(0)} TFLOP/s, ` +
      `${(overhead * 1e3).toFixed(2)} ms/step, KV ${kvCapacityTokens} tokens, link ${(link / GB).toFixed(0)} GB/s`,
  };
}

/**
 * The analytical model at every degree the shape allows: TP over powers of two that divide the
 * query heads and the KV heads (or are a multiple of them), PP over powers of two up to the layer
 * count. A degree whose weights do not fit its GPUs' memory is refused with the numbers.
 */
export function analyticalDegrees(hardware: Hardware | string, shape: ModelShape | string, options: AnalyticalOptions = {}): DegreeCosts {
  const base = analyticalCostModel(hardware, shape, { ...options, tensorParallel: 1, pipelineParallel: 1 });
  const { hardware: hw, shape: s } = base;
  const tpOk = (tp: number) => s.nHeads % tp === 0 && (s.nKvHeads % tp === 0 || tp % s.nKvHeads === 0);
  const eff = options.linkEfficiency ?? 0.8;
  const scaled = (l: Link): Link => ({ ...l, bytesPerSecond: l.bytesPerSecond * eff });
  return {
    describe: () => `analytical roofline: ${s.name} on ${hw.name}, ${hw.interconnect.name} inside a node, ${hw.network.name} across nodes`,
    degrees: (maxGpus) => {
      const out: Parallelism[] = [];
      for (const tp of powersOfTwo(maxGpus)) for (const pp of powersOfTwo(Math.floor(maxGpus / tp))) if (tpOk(tp) && pp <= s.nLayers) out.push({ tp, pp });
      return out.sort((a, b) => a.tp * a.pp - b.tp * b.pp || a.pp - b.pp);
    },
    at: (d) => {
      const m = analyticalCostModel(hw, s, { ...options, tensorParallel: d.tp, pipelineParallel: d.pp });
      const { weightBytesPerGpu: w, usableBytesPerGpu: u } = m.memory;
      if (w >= u) return `weights need ${(w / GB).toFixed(1)} GB per GPU, ${(u / GB).toFixed(1)} GB usable (${pct(options.memoryUtilisation ?? 0.9)} of ${(hw.memoryBytes / GB).toFixed(0)} GB)`;
      return m;
    },
    links: { intraNode: scaled(hw.interconnect), interNode: scaled(hw.network), kvBytesPerToken: base.kvBytesPerToken },
  };
}
