import { describe, expect, it } from 'vitest';
import { rowWorkgroupSize, softmax, softmaxRef } from '../kernels/softmax.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
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
// The subgroup variant (softmax_subgroup.wgsl) sums differently: each lane's ceil(cols/WG) terms,
// then WG/L serial additions per subgroup lane and subgroupAdd over L lanes (at worst serial, L - 1),
// worst over the device's subgroup sizes L. Its rtol is the plain bound with that chain in place of
// the tree's: 180 ULP of exp + chain + 3 (reciprocal, multiply, max rescale), at least TOL's.
function subgroupTol(gpu: Gpu, cols: number): typeof TOL {
  const wg = rowWorkgroupSize(gpu, cols);
  let worst = 0;
  for (let l = Math.max(1, gpu.adapter.subgroupMinSize); l <= Math.max(1, gpu.adapter.subgroupMaxSize); l *= 2) worst = Math.max(worst, wg / l + l - 1);
  return { atol: TOL.atol, rtol: Math.max(TOL.rtol, (180 + Math.ceil(cols / wg) + worst + 3) * 2 ** -24) };
}
// Row sums: the f32 sum of cols outputs each within the relative error above.
const SUM_TOL = 5e-5;

const NEG_INF = -Infinity;

async function check(getGpu: () => Gpu, x: Float32Array, rows: number, cols: number, label: string, subgroups = false) {
  const gpu = getGpu();
  const xb = gpu.upload(x);
  const yb = gpu.createBuffer(rows * cols * 4);
  const step = gpu.step();
  softmax(step, { x: xb, out: yb, rows, cols, subgroups });
  await step.submit();
  const y = await gpu.readF32(yb, rows * cols);
  const ref = softmaxRef(x, rows, cols);
  expectClose(y, ref, subgroups ? subgroupTol(gpu, cols) : TOL, label);
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

for (const subgroups of [false, true]) describe(subgroups ? 'softmax (subgroup variant)' : 'softmax', () => {
  const getGpu = useGpu();
  const sg = subgroups ? ' subgroup' : '';
  // the subgroup variant needs the device feature
  const skip = (ctx: { skip: () => void }) => {
    if (subgroups && !getGpu().features.subgroups) ctx.skip();
  };

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
    // the subgroup variant on one row, a row that is not a multiple of the workgroup, a long row
    if (subgroups && !(cols === 1 || cols === 173 || cols === 50_000)) continue;
    it(`rows=${rows} cols=${cols} std=${std}`, async (ctx) => {
      skip(ctx);
      const y = await check(getGpu, normalArray(rows * cols, rows * 7919 + cols, std), rows, cols, `softmax${sg} ${rows}x${cols}`, subgroups);
      if (cols === 1) for (const v of y) expect(v).toBe(1);
    });
  }

  if (!subgroups) it('large-magnitude logits (+-80) do not overflow', async () => {
    const rows = 4;
    const cols = 300;
    const x = uniformArray(rows * cols, 11, -80, 80);
    for (let i = 0; i < cols; i++) x[i] = i % 2 ? 80 : -80; // row 0: alternating extremes
    x.fill(88.5, cols, 2 * cols); // row 1: all equal and large: uniform
    await check(getGpu, x, rows, cols, 'softmax +-80');
  });

  it('-inf entries get probability 0; a fully masked row is all zeros', async (ctx) => {
    skip(ctx);
    const rows = 4;
    const cols = 517;
    const x = normalArray(rows * cols, 5, 3);
    for (let i = 0; i < cols; i++) if (i % 3 === 0) x[i] = NEG_INF; // row 0: a third masked
    x.fill(NEG_INF, cols, 2 * cols); // row 1: fully masked
    x.fill(NEG_INF, 2 * cols, 3 * cols);
    x[2 * cols + 400] = -3; // row 2: a single survivor -> probability exactly 1
    x[3 * cols + 1] = Infinity; // row 3: +inf and NaN are treated as masked too
    x[3 * cols + 2] = NaN;
    const y = await check(getGpu, x, rows, cols, `softmax${sg} -inf`, subgroups);
    expect(y[2 * cols + 400]).toBe(1);
    for (let i = 0; i < cols; i++) if (i % 3 === 0) expect(y[i]).toBe(0);
  });
});
