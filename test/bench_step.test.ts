import { describe, expect, it, vi } from 'vitest';
import { type StepBenchReport, runStepBench, stepBenchMarkdown } from '../bench/step.ts';
import { Step } from '../src/gpu/step.ts';
import type { ModelShape } from '../src/model/shapes.ts';
import { useGpu } from './helpers/gpu.ts';

/** Small enough for the software device; q4_0 rows need K a multiple of 32. */
const TINY: ModelShape = { name: 'tiny', dim: 64, ffn: 96, nHeads: 4, nKvHeads: 2, headDim: 16, vocab: 320, nLayers: 3 };

describe('bench step', () => {
  const getGpu = useGpu();

  it('counts a steady-state decode step exactly: no bind group, buffer or pipeline created; every dispatch counted', async () => {
    const gpu = getGpu();
    const dispatch = vi.spyOn(Step.prototype, 'dispatch');
    const o = { warmup: 1, steps: 2, recordRepeats: 2, context: 3 };
    let report: StepBenchReport;
    let dispatched: number;
    try {
      report = await runStepBench(gpu, [{ model: TINY, dtype: 'q4_0', scale: 'full', batches: [2], ...o }], true);
      dispatched = dispatch.mock.calls.length;
    } finally {
      dispatch.mockRestore();
    }
    const [run] = report.runs;
    expect(run.layersMeasured).toBe(TINY.nLayers);
    let decodeSteps = 0;
    for (const r of run.results) {
      expect(r.countsVaried).toBe(false);
      expect(r.contextTokens).toBe(o.context + o.warmup);
      expect(r.measured).toMatchObject({ bindGroupsCreated: 0, buffersCreated: 0, pipelinesCreated: 0, submits: 1, computePasses: 1, readbacks: 1 });
      // all layers were run: the split adds back up to the measured counts
      for (const k of ['dispatches', 'writeBufferCalls', 'writeBufferBytes'] as const) {
        expect(r.fixed[k] + TINY.nLayers * r.perLayer[k]).toBe(r.measured[k]);
        expect(r.fullModel[k]).toBe(r.measured[k]);
      }
      expect(r.perLayer.dispatches).toBeGreaterThan(0);
      decodeSteps += (o.warmup + o.steps + o.recordRepeats) * r.measured.dispatches;
    }
    // the dispatches the model recorded (Step.dispatch calls), prefill steps aside, are the counted ones
    const prefillDispatches = dispatched - decodeSteps;
    expect(prefillDispatches).toBeGreaterThan(0);
    expect(prefillDispatches).toBeLessThan(run.results.length * run.results[0].measured.dispatches * 2);
    // trace: per measured step, host recording ends where submit starts, the read-back after submit
    const steps = o.steps * run.results.length;
    const byName = (prefix: string) => report.trace.filter((e) => e.name.startsWith(prefix));
    expect(byName('record ').length).toBe(steps);
    expect(byName('read-back ').length).toBe(steps);
    for (const rec of byName('record ')) {
      const label = rec.name.slice('record '.length);
      const submit = report.trace.find((e) => e.name === `submit ${label}`)!;
      const read = report.trace.find((e) => e.name === `read-back ${label}`)!;
      expect(submit.ts).toBeCloseTo(rec.ts + rec.dur, 3);
      expect(read.ts).toBeGreaterThanOrEqual(submit.ts);
    }
    expect(stepBenchMarkdown(report)).toContain('| 2: whole model |');
  });
});
