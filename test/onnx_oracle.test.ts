import { rmSync } from 'node:fs';
import { afterAll, describe, it } from 'vitest';
import { matmul } from '../kernels/matmul.ts';
import { rmsNorm } from '../kernels/rmsnorm.ts';
import { softmax } from '../kernels/softmax.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';
import { buildModel, intAttr, intsAttr, node, runOnnx } from './helpers/onnx.ts';

// Both sides compute in f32 with different summation orders (ORT: blocked/vectorised CPU loops;
// ours: GPU tree reductions and tiles). Their difference is bounded by the f32 rounding of a
// K-term sum, ~K * 2^-24 relative to the sum of |terms| in the worst case and ~sqrt(K) * 2^-24
// typically; the tolerances below sit a decade above the typical bound at these sizes.
describe('kernels agree with onnxruntime (CPU) on shapes the unit tests do not use', () => {
  // onnxruntime-node's CPU backend leaves an empty /tmp/mat-debug-<pid>.log behind (whatever TMPDIR says)
  afterAll(() => rmSync(`/tmp/mat-debug-${process.pid}.log`, { force: true }));

  const getGpu = useGpu();

  for (const [m, n, k] of [
    [1, 97, 320],
    [5, 45, 1000],
    [41, 130, 96],
  ]) {
    it(`MatMul ${m}x${k} · ${k}x${n}`, async () => {
      const gpu = getGpu();
      const x = normalArray(m * k, m + n + k);
      const w = normalArray(n * k, n * 7 + k); // our layout: [n, k], rows are output features
      const wt = new Float32Array(k * n); // ONNX MatMul wants [k, n]
      for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) wt[c * n + r] = w[r * k + c];
      const model = buildModel({
        nodes: [node('MatMul', ['X', 'W'], ['Y'])],
        inputs: [{ name: 'X', dims: [m, k] }],
        outputs: [{ name: 'Y', dims: [m, n] }],
        initializers: [{ name: 'W', dims: [k, n], data: wt }],
      });
      const want = await runOnnx(model, { X: { data: x, dims: [m, k] } });

      const xb = gpu.upload(x);
      const wb = gpu.upload(w);
      const yb = gpu.createBuffer(m * n * 4);
      const step = gpu.step();
      matmul(step, { x: xb, w: wb, out: yb, m, n, k, format: 'f32' });
      await step.submit();
      // |y| ~ sqrt(k) here; atol covers the f32 rounding of the k-term sums (see above).
      expectClose(await gpu.readF32(yb, m * n), want, { atol: 2e-5 * Math.sqrt(k), rtol: 1e-5 }, 'matmul vs onnxruntime');
      [xb, wb, yb].forEach((b) => b.destroy());
    });
  }

  for (const [rows, cols, scale] of [
    [3, 1001, 1],
    [2, 32000, 8],
  ]) {
    it(`Softmax ${rows}x${cols} (logit scale ${scale})`, async () => {
      const gpu = getGpu();
      const x = normalArray(rows * cols, rows * cols, scale);
      const model = buildModel({
        nodes: [node('Softmax', ['X'], ['Y'], [intAttr('axis', -1)])],
        inputs: [{ name: 'X', dims: [rows, cols] }],
        outputs: [{ name: 'Y', dims: [rows, cols] }],
      });
      const want = await runOnnx(model, { X: { data: x, dims: [rows, cols] } });
      const xb = gpu.upload(x);
      const yb = gpu.createBuffer(rows * cols * 4);
      const step = gpu.step();
      softmax(step, { x: xb, out: yb, rows, cols });
      await step.submit();
      // probabilities: relative error of exp (few ulp) plus the f32 normaliser sum (~cols ulp worst)
      expectClose(await gpu.readF32(yb, rows * cols), want, { atol: 1e-8, rtol: 2e-4 }, 'softmax vs onnxruntime');
      [xb, yb].forEach((b) => b.destroy());
    });
  }

  for (const [rows, dim] of [
    [1, 2560],
    [9, 333],
  ]) {
    it(`RMSNorm ${rows}x${dim} as composed ONNX ops`, async () => {
      const gpu = getGpu();
      const eps = 1e-6;
      const x = normalArray(rows * dim, dim, 3);
      const w = normalArray(dim, dim + 1);
      // y = x / sqrt(mean(x*x) + eps) * w
      const model = buildModel({
        nodes: [
          node('Mul', ['X', 'X'], ['sq']),
          node('ReduceMean', ['sq'], ['ms'], [intsAttr('axes', [-1]), intAttr('keepdims', 1)]),
          node('Add', ['ms', 'eps'], ['mse']),
          node('Sqrt', ['mse'], ['rms']),
          node('Div', ['X', 'rms'], ['xn']),
          node('Mul', ['xn', 'W'], ['Y']),
        ],
        inputs: [{ name: 'X', dims: [rows, dim] }],
        outputs: [{ name: 'Y', dims: [rows, dim] }],
        initializers: [
          { name: 'eps', dims: [], data: new Float32Array([eps]) },
          { name: 'W', dims: [dim], data: w },
        ],
      });
      const want = await runOnnx(model, { X: { data: x, dims: [rows, dim] } });
      const xb = gpu.upload(x);
      const wb = gpu.upload(w);
      const yb = gpu.createBuffer(rows * dim * 4);
      const step = gpu.step();
      rmsNorm(step, { x: xb, weight: wb, out: yb, rows, dim, eps });
      await step.submit();
      expectClose(await gpu.readF32(yb, rows * dim), want, { atol: 1e-6, rtol: 3e-5 }, 'rmsnorm vs onnxruntime');
      [xb, wb, yb].forEach((b) => b.destroy());
    });
  }
});
