import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';

export interface SiluMulArgs {
  /** [count] f32 gate projection */
  gate: Binding;
  /** [count] f32 up projection */
  up: Binding;
  /** [count] f32 = silu(gate) * up; must not alias gate or up (WebGPU forbids a writable binding overlapping another in one dispatch) */
  out: Binding;
  count: number;
}

export interface AddArgs {
  /** [count] f32 */
  a: Binding;
  /** [count] f32 */
  b: Binding;
  /** [count] f32 = a + b; must not alias a or b (WebGPU forbids a writable binding overlapping another in one dispatch) */
  out: Binding;
  count: number;
}

const WG = 256;

function range(b: Binding): { buffer: GPUBuffer; start: number; end: number } {
  if ('buffer' in b) {
    const start = b.offset ?? 0;
    return { buffer: b.buffer, start, end: b.size === undefined ? b.buffer.size : start + b.size };
  }
  return { buffer: b, start: 0, end: b.size };
}

/** Throws early, with a clear message, where WebGPU would reject the dispatch at submit. */
function checkNoAlias(entry: string, out: Binding, inputs: Binding[]): void {
  const o = range(out);
  for (const i of inputs.map(range)) {
    if (i.buffer === o.buffer && i.start < o.end && o.start < i.end) {
      throw new Error(`${entry}: out overlaps an input; WebGPU forbids a writable binding aliasing another binding of one dispatch`);
    }
  }
}

/**
 * One vec4 per invocation over the first floor(count/4) vec4s, then (only when count % 4 != 0) a
 * one-workgroup dispatch for the last 1-3 values. Model widths are multiples of 4, so a model step
 * normally records one dispatch.
 */
function elementwise(step: Step, entry: 'silu_mul' | 'add', buffers: Binding[], count: number): void {
  if (!Number.isInteger(count) || count < 0 || count > 0xffffffff) throw new RangeError(`${entry}: count must be a u32, got ${count}`);
  checkNoAlias(entry, buffers[2], buffers.slice(0, 2));
  const vecs = Math.floor(count / 4);
  if (vecs > 0) {
    step.dispatch({
      pipeline: step.gpu.pipelines.get('elementwise', entry, { WG }),
      params: new Params().u32(count),
      buffers,
      workgroups: grid1d(step.gpu, Math.ceil(vecs / WG)),
    });
  }
  if (count % 4 !== 0) {
    step.dispatch({
      pipeline: step.gpu.pipelines.get('elementwise', `${entry}_tail`),
      params: new Params().u32(count),
      buffers,
      workgroups: [1],
    });
  }
}

/** out = silu(gate) * up, the SwiGLU feed-forward activation. */
export function siluMul(step: Step, a: SiluMulArgs): void {
  elementwise(step, 'silu_mul', [a.gate, a.up, a.out], a.count);
}

/** out = a + b (residual add). */
export function add(step: Step, a: AddArgs): void {
  elementwise(step, 'add', [a.a, a.b, a.out], a.count);
}

/** CPU reference in float64: silu(g) = g / (1 + e^-g), written to stay finite for any g. */
export function siluMulRef(gate: Float32Array, up: Float32Array, count = gate.length): Float64Array {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const g = gate[i];
    const sig = g >= 0 ? 1 / (1 + Math.exp(-g)) : Math.exp(g) / (1 + Math.exp(g));
    out[i] = g * sig * up[i];
  }
  return out;
}

/** CPU reference in float64. */
export function addRef(a: Float32Array, b: Float32Array, count = a.length): Float64Array {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = a[i] + b[i];
  return out;
}
