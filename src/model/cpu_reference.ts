import { keyVisible } from '../../kernels/attention_windowed_ref.ts';
import type { HeadKind } from '../kv/head_pattern.ts';
import type { ModelConfig } from './config.ts';

/** Dequantised weights by GGUF tensor name (row-major [rows = dims[1], cols = dims[0]]). */
export type CpuWeights = Map<string, Float32Array>;

export interface CpuForwardOptions {
  /** observes each query head's attention probabilities over keys 0..position (calibrate-heads); outputs are unchanged */
  onAttention?: (layer: number, head: number, position: number, probs: Float64Array) => void;
  /** head-wise KV (docs/headwise.md): streaming KV heads ([layer][kvHead]) attend only to the first `sink` and latest `recent` keys; default off */
  window?: { kinds: readonly (readonly HeadKind[])[]; sink: number; recent: number };
}

/**
 * Float64 forward pass of a Llama-family model over one prompt: the oracle the GPU forward pass
 * is checked against. Slow and simple on purpose: no batching, no cache, every position's logits.
 */
export function cpuForward(cfg: ModelConfig, w: CpuWeights, tokens: number[], options: CpuForwardOptions = {}): Float64Array[] {
  const ropeFactors = w.get('rope_freqs.weight');
  const { dim, nHeads, nKvHeads, headDim, ffn } = cfg;
  const get = (name: string) => {
    const t = w.get(name);
    if (!t) throw new Error(`cpuForward: missing tensor ${name}`);
    return t;
  };
  const T = tokens.length;
  const emb = get('token_embd.weight');
  const x = tokens.map((tok) => Float64Array.from(emb.subarray(tok * dim, (tok + 1) * dim)));
  const kCache: Float64Array[][] = [];
  const vCache: Float64Array[][] = [];

  for (let l = 0; l < cfg.nLayers; l++) {
    const p = `blk.${l}.`;
    const keys: Float64Array[] = [];
    const values: Float64Array[] = [];
    const queries: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const h = rmsnorm(x[t], get(`${p}attn_norm.weight`), cfg.rmsEps);
      const q = matvec(get(`${p}attn_q.weight`), h, nHeads * headDim, w.get(`${p}attn_q.bias`));
      const k = matvec(get(`${p}attn_k.weight`), h, nKvHeads * headDim, w.get(`${p}attn_k.bias`));
      const v = matvec(get(`${p}attn_v.weight`), h, nKvHeads * headDim, w.get(`${p}attn_v.bias`));
      rope(q, nHeads, t, cfg, ropeFactors);
      rope(k, nKvHeads, t, cfg, ropeFactors);
      queries.push(q);
      keys.push(k);
      values.push(v);
    }
    kCache.push(keys);
    vCache.push(values);
    const group = nHeads / nKvHeads;
    const scale = 1 / Math.sqrt(headDim);
    for (let t = 0; t < T; t++) {
      const att = new Float64Array(nHeads * headDim);
      for (let hq = 0; hq < nHeads; hq++) {
        const hk = Math.floor(hq / group);
        const win = options.window?.kinds[l][hk] === 'streaming' ? options.window : null;
        const scores = new Float64Array(t + 1);
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          if (!keyVisible(s, t, win)) {
            scores[s] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let d = 0; d < headDim; d++) dot += queries[t][hq * headDim + d] * keys[s][hk * headDim + d];
          scores[s] = dot * scale;
          max = Math.max(max, scores[s]);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) sum += (scores[s] = Math.exp(scores[s] - max));
        options.onAttention?.(l, hq, t, scores.map((e) => e / sum));
        for (let s = 0; s <= t; s++) {
          const a = scores[s] / sum;
          for (let d = 0; d < headDim; d++) att[hq * headDim + d] += a * values[s][hk * headDim + d];
        }
      }
      const o = matvec(get(`${p}attn_output.weight`), att, dim);
      for (let i = 0; i < dim; i++) x[t][i] += o[i];
      const h = rmsnorm(x[t], get(`${p}ffn_norm.weight`), cfg.rmsEps);
      const gate = matvec(get(`${p}ffn_gate.weight`), h, ffn);
      const up = matvec(get(`${p}ffn_up.weight`), h, ffn);
      for (let i = 0; i < ffn; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
      const down = matvec(get(`${p}ffn_down.weight`), gate, dim);
      for (let i = 0; i < dim; i++) x[t][i] += down[i];
    }
  }
  const head = w.get('output.weight') ?? emb;
  return x.map((xt) => matvec(head, rmsnorm(xt, get('output_norm.weight'), cfg.rmsEps), cfg.vocabSize));
}

function rmsnorm(x: Float64Array, weight: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const s = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * s * weight[i]);
}

function matvec(w: Float32Array, x: Float64Array, rows: number, bias?: Float32Array): Float64Array {
  const cols = x.length;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = bias ? bias[r] : 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) acc += w[base + c] * x[c];
    y[r] = acc;
  }
  return y;
}

/** Inverse frequencies in float64 (linear scaling and rope_freqs divisors; the GPU path shares kernels/rope.ts). */
function rope(v: Float64Array, heads: number, pos: number, cfg: ModelConfig, factors?: Float32Array): void {
  const { headDim, ropeDim, ropeBase } = cfg;
  const factor = cfg.ropeScaling?.type === 'linear' ? cfg.ropeScaling.factor : 1;
  const half = ropeDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const theta = ((pos / factor) * Math.pow(ropeBase, (-2 * i) / ropeDim)) / (factors ? factors[i] : 1);
      const c = Math.cos(theta);
      const s = Math.sin(theta);
      const [a, b] = cfg.ropeMode === 'normal' ? [h * headDim + 2 * i, h * headDim + 2 * i + 1] : [h * headDim + i, h * headDim + i + half];
      const x0 = v[a];
      const x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}
