import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';

export interface CopyArgs {
  /** source; its binding must cover `bytes` rounded up to 4 */
  src: Binding;
  /** destination; must cover `bytes` rounded up to 4 and not overlap src. Bytes past `bytes` are kept. */
  dst: Binding;
  bytes: number;
  /** Caps the workgroups of the vec4 dispatch (default MAX_WORKGROUPS); tests lower it to exercise the grid-stride loop. */
  maxWorkgroups?: number;
}

const WG = 256;
/** vec4s per invocation per tile; must match UNROLL in shaders/copy.wgsl */
const UNROLL = 4;
/**
 * Most workgroups one copy dispatches; beyond, workgroups loop over tiles. 8192 x 256 invocations
 * (2M) is several times what any current GPU keeps resident (an H100 holds 132 x 2048), so every
 * SM/CU stays fed while large copies reuse resident workgroups instead of launching new ones.
 */
export const MAX_WORKGROUPS = 8192;

function start(b: Binding): { buffer: GPUBuffer; offset: number } {
  return 'buffer' in b ? { buffer: b.buffer, offset: b.offset ?? 0 } : { buffer: b, offset: 0 };
}

/** Whether the first `bytes` (rounded up to 4) of the two bindings share memory. */
function overlaps(x: Binding, y: Binding, bytes: number): boolean {
  const a = start(x);
  const b = start(y);
  const n = Math.ceil(bytes / 4) * 4;
  return n > 0 && a.buffer === b.buffer && a.offset < b.offset + n && b.offset < a.offset + n;
}

/**
 * Copies `bytes` bytes from src to dst in a compute pass: 16-byte vectors, several per invocation,
 * grid-stride over tiles; a one-workgroup tail dispatch for the last bytes % 16 bytes (any byte count
 * works; a partial last word is merged into dst). Unlike `step.copy` it does not end the step's
 * compute pass, and it is the kernel the benchmark's copy roofline is measured with.
 */
export function copyBuffer(step: Step, a: CopyArgs): void {
  if (!Number.isInteger(a.bytes) || a.bytes < 0) throw new RangeError(`copyBuffer: bytes must be a non-negative integer, got ${a.bytes}`);
  if (overlaps(a.src, a.dst, a.bytes)) throw new Error('copyBuffer: src and dst overlap; WebGPU forbids a writable binding aliasing another binding of one dispatch');
  const n4 = Math.floor(a.bytes / 16);
  const tail = a.bytes - n4 * 16;
  if (a.maxWorkgroups !== undefined && !(Number.isInteger(a.maxWorkgroups) && a.maxWorkgroups >= 1)) throw new RangeError(`copyBuffer: maxWorkgroups must be a positive integer`);
  // the shader indexes u32 words up to 4 * n4 + 3 and vec4s up to a whole tile past n4
  if (4 * n4 + 4 > 0xffffffff || n4 + WG * UNROLL > 0xffffffff) throw new RangeError(`copyBuffer: ${a.bytes} bytes is too large for one dispatch`);
  const params = new Params().u32(n4).u32(tail);
  if (n4 > 0) {
    step.dispatch({
      pipeline: step.gpu.pipelines.get('copy', 'copy', { WG }),
      params,
      buffers: [a.src, a.dst],
      workgroups: grid1d(step.gpu, Math.min(Math.ceil(n4 / (WG * UNROLL)), a.maxWorkgroups ?? MAX_WORKGROUPS)),
    });
  }
  if (tail > 0) {
    step.dispatch({
      pipeline: step.gpu.pipelines.get('copy', 'copy_tail'),
      params,
      buffers: [a.src, a.dst],
      workgroups: [1],
    });
  }
}

/** CPU reference: dst with its first `bytes` bytes replaced by src's. */
export function copyRef(src: Uint8Array, dst: Uint8Array, bytes: number): Uint8Array {
  const out = Uint8Array.from(dst);
  out.set(src.subarray(0, bytes), 0);
  return out;
}
