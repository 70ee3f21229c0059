import { type BenchCase, type CaseFactory, L2_BYTES } from '../case.ts';
import { type ModelShape, benchShapes } from '../shapes.ts';
import { matmul, matmulVariant } from '../../kernels/matmul.ts';
import { QK, SUPERBLOCK, WEIGHT_FORMATS, type WeightFormat, encodeWeights, gpuWeightBytes, isQuantized, repackWeights, weightBytes } from '../../kernels/weights.ts';
import { align } from '../../src/gpu/buffers.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { normalArray } from '../../src/util/rng.ts';

/** Elements encoded per weight matrix: random rows of at most this many elements are repeated. */
const PATTERN_ELEMS = 1 << 20;

/**
 * `copies` [n, k] weight matrices of random N(0, 0.02) values in `format`, back to back in one
 * buffer at `stride`-byte steps (aligned for storage bindings). Encoding hundreds of millions of
 * elements on the CPU would dominate the benchmark's setup, so up to 1M elements of whole rows are
 * encoded (llama.cpp's reference quantisers, encodeWeights), repacked as uploads are (repackWeights)
 * and repeated over all n rows: the kernel reads every byte of the matrix either way, and its speed
 * does not depend on the values. A repeated pattern is whole superblocks of the repacked layout (its
 * rows a multiple of SUPERBLOCK), so the repetition is that layout of the repeated rows.
 */
export function randomWeightCopies(gpu: Gpu, format: WeightFormat, n: number, k: number, seed: number, copies: number): { buffer: GPUBuffer; bytes: number; stride: number } {
  const fit = Math.max(SUPERBLOCK, Math.floor(PATTERN_ELEMS / k));
  const rows = Math.min(n, fit - (fit % SUPERBLOCK));
  const pattern = repackWeights(format, encodeWeights(format, normalArray(rows * k, seed, 0.02), rows, k), k);
  const total = gpuWeightBytes(format, n, k);
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (total > limit) throw new Error(`${format} [${n} x ${k}] weights (${total} bytes) exceed this device's binding limit (${limit})`);
  const stride = align(total, gpu.limits.minStorageBufferOffsetAlignment);
  const buffer = gpu.createBuffer(stride * copies, `${format} weights x${copies}`);
  // Each copy's bytes are the pattern repeated. Write them in chunks of a multiple of 4 patterns
  // (so every chunk and offset is 4-byte aligned), with no full-size CPU copy of the matrix.
  const reps = Math.max(4, Math.floor((64 << 20) / pattern.byteLength / 4) * 4);
  const chunk = new Uint8Array(pattern.byteLength * reps);
  for (let i = 0; i < reps; i++) chunk.set(pattern, i * pattern.byteLength);
  for (let c = 0; c < copies; c++) {
    for (let offset = 0; offset < total; offset += chunk.byteLength) {
      gpu.write(buffer, chunk.subarray(0, Math.min(chunk.byteLength, total - offset)), c * stride + offset);
    }
  }
  return { buffer, bytes: total, stride };
}

/** One random [n, k] weight matrix in `format` (see randomWeightCopies). */
export function randomWeights(gpu: Gpu, format: WeightFormat, n: number, k: number, seed: number): GPUBuffer {
  return randomWeightCopies(gpu, format, n, k, seed, 1).buffer;
}

/** Copies of a matrix of `bytes` that together exceed L2_BYTES (one when it alone does), within the device's buffer size. */
export function weightCopies(gpu: Gpu, bytes: number): number {
  const stride = align(bytes, gpu.limits.minStorageBufferOffsetAlignment);
  const wanted = bytes > L2_BYTES ? 1 : Math.floor(L2_BYTES / stride) + 1;
  return Math.max(1, Math.min(wanted, Math.floor(gpu.limits.maxBufferSize / stride)));
}

interface Projection {
  what: string;
  n: number;
  k: number;
}

/** K rounded up to whole quantisation blocks for quantised formats (stories260K's ffn is 172). */
function blockK(format: WeightFormat, k: number): number {
  return isQuantized(format) ? Math.ceil(k / QK) * QK : k;
}

function matmulCase(shape: ModelShape, format: WeightFormat, proj: Projection, m: number, seed: number): BenchCase {
  const k = blockK(format, proj.k);
  const n = proj.n;
  const variant = matmulVariant(m);
  const kNote = k !== proj.k ? ` (K ${proj.k} rounded to ${k})` : '';
  return {
    family: 'matmul',
    name: `${format} ${shape.name} ${proj.what} M=${m} (${k} -> ${n})${kNote} [${variant}]`,
    computeBound: variant === 'tiled',
    setup(gpu) {
      const copies = weightCopies(gpu, weightBytes(format, n, k));
      const w = randomWeightCopies(gpu, format, n, k, seed, copies);
      const x = gpu.upload(normalArray(m * k, seed + 1));
      const out = gpu.createBuffer(m * n * 4);
      return {
        run: (step, index) => matmul(step, { x, w: { buffer: w.buffer, offset: (index % copies) * w.stride, size: w.bytes }, out, m, n, k, format }),
        weightCopies: copies,
        // weights read once, activations read once, outputs written once
        bytes: weightBytes(format, n, k) + m * k * 4 + m * n * 4,
        flops: 2 * m * n * k,
        dispose: () => [w.buffer, x, out].forEach((b) => b.destroy()),
      };
    },
  };
}

/**
 * Per model shape and weight format: decode M=1 on ffn_up, decode M=8 on ffn_down (the long-K
 * matrix) and prefill on the q projection; per model shape in q4_0 also the output head at M=1,
 * prefill on ffn_up, and a decode batch of 32 on ffn_down (the tiled kernel, split over K on a
 * GPU: matmulSplits). Prefill is M=512 at full scale, M=64 reduced. bf16 reads as many bytes as f16
 * and shares its load path, so it skips the M=8 ffn_down case (decode M=1 and prefill show its
 * bandwidth and compute rates). 68 cases.
 */
export const cases: CaseFactory = (scale) => {
  const prefillM = scale === 'full' ? 512 : 64;
  const out: BenchCase[] = [];
  let seed = 1;
  for (const shape of benchShapes(scale)) {
    const q: Projection = { what: 'attn_q', n: shape.dim, k: shape.dim };
    const up: Projection = { what: 'ffn_up', n: shape.ffn, k: shape.dim };
    const down: Projection = { what: 'ffn_down', n: shape.dim, k: shape.ffn };
    const head: Projection = { what: 'output', n: shape.vocab, k: shape.dim };
    for (const format of WEIGHT_FORMATS) {
      out.push(matmulCase(shape, format, up, 1, seed++));
      if (format !== 'bf16') out.push(matmulCase(shape, format, down, 8, seed++));
      out.push(matmulCase(shape, format, q, prefillM, seed++));
    }
    out.push(matmulCase(shape, 'q4_0', head, 1, seed++));
    out.push(matmulCase(shape, 'q4_0', up, prefillM, seed++));
    out.push(matmulCase(shape, 'q4_0', down, 32, seed++));
  }
  return out;
};
