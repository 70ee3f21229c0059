import { describe, expect, it } from 'vitest';
import { attentionMass, randomTokens, scaleQueries } from '../bench/ann_model.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import type { ModelSource } from '../src/model/source.ts';
import { syntheticModel } from '../src/model/synthetic.ts';

// CPU only: the stories260K shape with random F32 weights, 40 tokens (milliseconds)
const src = syntheticModel('stories260k', 'f32');
const tokens = randomTokens(src, 1, 40, 5)[0];

function weights(s: ModelSource): CpuWeights {
  return new Map([...s.tensors].map(([name, t]) => [name, new Float32Array(t.read().slice().buffer)]));
}

/** Every (layer, head, position)'s attention probabilities from the float64 oracle. */
function probsOf(s: ModelSource): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  cpuForward(s.config, weights(s), tokens, { onAttention: (l, h, t, p) => out.set(`${l}/${h}/${t}`, p) });
  return out;
}

describe('bench ann --synthetic helpers', () => {
  it('scaleQueries scales every attention logit: layer 0 probabilities become p^s / sum p^s', () => {
    const s = 3;
    const base = probsOf(src);
    const scaled = probsOf(scaleQueries(src, s));
    let checked = 0;
    for (const [key, p] of base) {
      if (!key.startsWith('0/')) continue; // later layers' inputs change with the attention
      const want = p.map((x) => x ** s);
      const z = want.reduce((a, b) => a + b, 0);
      const got = scaled.get(key)!;
      // both sides are float64 computations of the same logits (the scaled weights rounded to f32: relative 2^-24 each)
      want.forEach((w, i) => expect(Math.abs(got[i] - w / z)).toBeLessThan(1e-5));
      checked++;
    }
    expect(checked).toBe(src.config.nHeads * tokens.length);
    expect(() => scaleQueries(syntheticModel('stories260k', 'f16'), 2)).toThrow(/F32/);
  });

  it('attentionMass: top-k and window masses are those of the oracle probabilities', () => {
    const from = 30;
    const probs = probsOf(src);
    const want = { top1: 0, top4: 0, window: 0, n: 0 };
    for (const [key, p] of probs) {
      const t = Number(key.split('/')[2]);
      if (t < from) continue;
      const sorted = [...p].sort((a, b) => b - a);
      want.top1 += sorted[0];
      want.top4 += sorted[0] + sorted[1] + sorted[2] + sorted[3];
      want.window += p[0] + p[1] + p[t]; // sink 2, recent 1: the first two keys and the position's own
      want.n++;
    }
    const m = attentionMass(src, tokens, from, { k: 4, sink: 2, recent: 1 });
    expect(m.positions).toBe(tokens.length - from);
    expect(m.top1).toBeCloseTo(want.top1 / want.n, 12);
    expect(m.topK).toBeCloseTo(want.top4 / want.n, 12);
    expect(m.window).toBeCloseTo(want.window / want.n, 12);
    // a window or k covering every key holds all the mass
    const all = attentionMass(src, tokens, from, { k: tokens.length, sink: 0, recent: tokens.length });
    expect(all.topK).toBeCloseTo(1, 12);
    expect(all.window).toBeCloseTo(1, 12);
  });
});
