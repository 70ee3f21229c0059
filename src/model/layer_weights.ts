import type { ModelConfig } from './config.ts';
import type { GpuTensor } from './gpu_weights.ts';

/** One linear layer: its weight and, for models with q/k/v biases, its bias. */
export interface Linear {
  weight: GpuTensor;
  bias?: GpuTensor;
}

/**
 * A transformer layer's weights, looked up once at load so that the forward pass builds no names
 * and does no map lookups per dispatch. q/k/v and gate/up are single fused tensors where their
 * parts share a format (gpu_weights.ts), else their parts.
 */
export interface LayerWeights {
  attnNorm: GpuTensor;
  attn: { qkv: Linear } | { q: Linear; k: Linear; v: Linear };
  output: Linear;
  ffnNorm: GpuTensor;
  ffn: { gateUp: Linear } | { gate: Linear; up: Linear };
  down: Linear;
}

/** The model-wide tensors around the layers. */
export interface ModelWeights {
  embedding: GpuTensor;
  layers: LayerWeights[];
  outputNorm: GpuTensor;
  /** the output projection (the embedding when the model ties them) */
  head: GpuTensor;
}

export function resolveWeights(w: ReadonlyMap<string, GpuTensor>, c: ModelConfig): ModelWeights {
  const tensor = (name: string): GpuTensor => {
    const t = w.get(name);
    if (!t) throw new Error(`weight ${name} is missing`);
    return t;
  };
  const linear = (name: string): Linear => ({ weight: tensor(`${name}.weight`), bias: c.qkvBias ? w.get(`${name}.bias`) : undefined });
  const layers = Array.from({ length: c.nLayers }, (_, l): LayerWeights => {
    const p = `blk.${l}.`;
    return {
      attnNorm: tensor(`${p}attn_norm.weight`),
      attn: w.has(`${p}attn_qkv.weight`) ? { qkv: linear(`${p}attn_qkv`) } : { q: linear(`${p}attn_q`), k: linear(`${p}attn_k`), v: linear(`${p}attn_v`) },
      output: linear(`${p}attn_output`),
      ffnNorm: tensor(`${p}ffn_norm.weight`),
      ffn: w.has(`${p}ffn_gate_up.weight`) ? { gateUp: linear(`${p}ffn_gate_up`) } : { gate: linear(`${p}ffn_gate`), up: linear(`${p}ffn_up`) },
      down: linear(`${p}ffn_down`),
    };
  });
  const embedding = tensor('token_embd.weight');
  return { embedding, layers, outputNorm: tensor('output_norm.weight'), head: w.get('output.weight') ?? embedding };
}
