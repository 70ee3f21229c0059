import type { Gpu } from '../src/gpu/gpu.ts';
import type { Step } from '../src/gpu/step.ts';
import type { BenchScale } from './shapes.ts';

/** An L2 size above any current GPU's: weights rotated among copies this large together are read from memory. */
export const L2_BYTES = 128 * 1024 * 1024;

/** What one benchmark case set up on the device: a dispatch to repeat and its traffic. */
export interface PreparedCase {
  /**
   * Records the kernel's dispatch(es) once into `step`; the harness repeats it and times the pass.
   * `index` counts the runs: a case with `weightCopies` uses copy `index % weightCopies`.
   */
  run(step: Step, index: number): void;
  /**
   * Copies of the case's weights the runs rotate among, together larger than the largest L2
   * (L2_BYTES): a run repeated on one small matrix would read it from cache and report more than
   * memory bandwidth. Absent: one copy.
   */
  weightCopies?: number;
  /** Bytes the kernel must move to/from memory per run (inputs read once + outputs written). */
  bytes: number;
  /** Floating-point operations per run (a multiply-add counts 2); 0 for pure data movement. */
  flops: number;
  /** Frees the case's buffers. */
  dispose(): void;
}

export interface BenchCase {
  /** Kernel family, e.g. "matmul", "attention-decode". */
  family: string;
  /** Variant and shape, e.g. "q4_0 Llama-3-8B ffn_up M=1 (4096 -> 14336)". */
  name: string;
  /** True when the kernel is compute-bound at this shape (its FLOP rate is then the figure to read). */
  computeBound?: boolean;
  setup(gpu: Gpu): PreparedCase;
}

/** Each bench/cases/<family>.ts exports `cases: CaseFactory`. */
export type CaseFactory = (scale: BenchScale) => BenchCase[];
