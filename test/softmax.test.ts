import { describe, expect, it } from 'vitest';
import { softmax, softmaxRef } from '../kernels/softmax.ts';
import { normalArray, uniformArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Each output is exp(x - max) / sum. WGSL allows exp an error of 3 + 2|x - max| ULP; outputs that
// are not negligible have |x - max| below ~87 (beyond that exp underflows f32), so at most ~180 ULP
// = 1.1e-5 relative, and in practice a few ULP. The f32 sum adds at worst (cols / WG + log2 WG)
// ULP relative (1.2e-5 for 50k columns over 256 invocations; random-walk errors are ~100x smaller),
// and the reciprocal and multiply two more. rtol 3e-5 covers the worst cases together (observed:
// ~2e-6). atol 1e-30: outputs below f32's smallest normal (1.2e-38) may be flushed to zero where
// float64 keeps e.g. exp(-160).
const TOL = { atol: 1e-30, rtol: 3e-5 };
// Row sums: the f32 sum of cols outputs each within the relative error above.
const SUM_TOL = 5e-5;

const NEG_INF = -Infinity;

async function check(getGpu: () => import('../src/gpu/gpu.ts').Gpu, x: Float32Array, rows: number, cols: number, label: string) {
  const gpu = getGpu();
  const xb = gpu.upload(x);
  const yb = gpu.createBuffer(rows * cols * 4);
  const step = gpu.step();
  softmax(step, { x: xb, out: yb, rows, cols });
  await step.submit();
  const y = await gpu.readF32(yb, rows * cols);
  const ref = softmaxRef(x, rows, cols);
  expectClose(y, ref, TOL, label);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    let any = false;
    for (let i = 0; i < cols; i++) {
      s += y[r * cols + i];
      any ||= Number.isFinite(x[r * cols + i]);
    }
    if (any) expect(Math.abs(s - 1), `${label} row ${r} sum`).toBeLessThan(SUM_TOL);
    else expect(s, `${label} row ${r} (fully masked) sum`).toBe(0);
  }
  xb.destroy();
  yb.destroy();
  return y;
}

describe('softmax', () => {
  const getGpu = useGpu();

  for (const [rows, cols, std] of [
    [1, 1, 1], // a single column: exactly 1
    [1, 5, 1],
    [1, 64, 3],
    [5, 1, 2], // many rows, one column
    [3, 173, 4], // not a multiple of the workgroup
    [300, 37, 2], // many short rows
    [2, 4099, 3],
    [2, 50_000, 3], // a vocabulary-sized row
  ]) {
    it(`rows=${rows} cols=${cols} std=${std}`, async () => {
      const y = await check(getGpu, normalArray(rows * cols, rows * 7919 + cols, std), rows, cols, `softmax ${rows}x${cols}`);
      if (cols === 1) for (const v of y) expect(v).toBe(1);
    });
  }

  it('large-magnitude logits (+-80) do not overflow', async () => {
    const rows = 4;
    const cols = 300;
    const x = uniformArray(rows * cols, 11, -80, 80);
    for (let i = 0; i < cols; i++) x[i] = i % 2 ? 80 : -80; // row 0: alternating extremes
    x.fill(88.5, cols, 2 * cols); // row 1: all equal and large: uniform
    await check(getGpu, x, rows, cols, 'softmax +-80');
  });

  it('-inf entries get probability 0; a fully masked row is all zeros', async () => {
    const rows = 4;
    const cols = 517;
    const x = normalArray(rows * cols, 5, 3);
    for (let i = 0; i < cols; i++) if (i % 3 === 0) x[i] = NEG_INF; // row 0: a third masked
    x.fill(NEG_INF, cols, 2 * cols); // row 1: fully masked
    x.fill(NEG_INF, 2 * cols, 3 * cols);
    x[2 * cols + 400] = -3; // row 2: a single survivor -> probability exactly 1
    x[3 * cols + 1] = Infinity; // row 3: +inf and NaN are treated as masked too
    x[3 * cols + 2] = NaN;
    const y = await check(getGpu, x, rows, cols, 'softmax -inf');
    expect(y[2 * cols + 400]).toBe(1);
    for (let i = 0; i < cols; i++) if (i % 3 === 0) expect(y[i]).toBe(0);
  });
});
