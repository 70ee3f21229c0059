import type { Engine, SamplingOptions, TokenEvent } from '../../src/engine/engine.ts';
import type { KvLayer } from '../../src/model/gpu_model.ts';

/** What a handover shipped: per layer, K and V as the prefill engine exported them. */
export interface Shipped {
  /** tokens of KV and rows per layer, as onKv and importKv gave them */
  tokens: number;
  rows: number;
  importRows: number;
  layers: KvLayer[];
}

/**
 * One request prefilled on `prefill` and handed over in-process to `decode`, its KV copied layer
 * by layer through the CPU as a worker pair ships it (src/workers does the same over TCP). Resolves
 * with the request's tokens (the first from the prefill engine) and what was shipped.
 */
export function handOverInProcess(
  prefill: Engine,
  decode: Engine,
  req: { prompt: number[]; sampling: SamplingOptions; onToken?: (e: TokenEvent) => void },
): Promise<{ tokens: number[]; shipped: Shipped }> {
  return new Promise((resolve, reject) => {
    const tokens: number[] = [];
    let shipped: Shipped | null = null;
    const events = {
      onToken: (e: TokenEvent) => {
        tokens.push(e.token);
        req.onToken?.(e);
      },
      onFinish: (_r: unknown, _u: unknown, err?: Error) => (err ? reject(err) : resolve({ tokens, shipped: shipped! })),
    };
    let kv: { tokens: number; rows: number; layers: Promise<KvLayer>[] } | null = null;
    prefill.submit({
      prompt: req.prompt,
      sampling: req.sampling,
      events,
      handoff: {
        onKv: (n, rows, layers) => (kv = { tokens: n, rows, layers }),
        onHandoff: (generated) =>
          void (async () => {
            const imp = decode.importKv(kv!.tokens)!;
            const layers: KvLayer[] = [];
            for (const [l, layer] of kv!.layers.entries()) {
              const { k, v } = await layer;
              layers.push({ k, v });
              await imp.writeLayer(l, { k: new Float32Array(k), v: new Float32Array(v) });
            }
            shipped = { tokens: kv!.tokens, rows: kv!.rows, importRows: imp.rows, layers };
            decode.adopt({ prompt: req.prompt, generated, sampling: req.sampling, events }, imp);
          })().catch(reject),
      },
    });
  });
}
