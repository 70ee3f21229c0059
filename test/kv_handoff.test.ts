import { describe, expect, it } from 'vitest';
import { Engine, type SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { openModel } from '../src/model/source.ts';
import { KvReceiver, KvSender } from '../src/workers/kv_transfer.ts';
import { modelFingerprint } from '../src/workers/protocol.ts';
import { useGpu } from './helpers/gpu.ts';
import { handOverInProcess } from './helpers/handoff.ts';

const sampling = (maxTokens: number, temperature = 0, seed = 0): SamplingOptions => ({ maxTokens, temperature, topK: 0, topP: 1, seed, stop: [] });

/**
 * The handover in one process, two models on one device: a prefill-only engine exports each
 * sequence's KV layer by layer, a second engine imports it and decodes on. Token for token the
 * same as one engine doing both (greedy and seeded sampling), since the KV moves bit for bit.
 */
describe('KV handover between engines', () => {
  const getGpu = useGpu();

  it('prefill on one engine, decode on another: the outputs of one engine', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const prompts = ['Once upon a time', 'The little dog was sad because', 'Tom', 'One day a bird flew over the big tree and saw'].map((p) => src.tokenizer.encode(p));
    const opts = prompts.map((_, i) => sampling(12 + i, i % 2 ? 0.8 : 0, 7 + i));
    const colocated = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const expected = (await generate(colocated, src.tokenizer, prompts.map((tokens, i) => ({ tokens, options: opts[i] })))).results.map((r) => r.tokens);
    colocated.destroy();

    const prefillModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const decodeModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const prefill = new Engine(prefillModel, src.tokenizer);
    const decode = new Engine(decodeModel, src.tokenizer);
    const handed = await Promise.all(prompts.map((prompt, i) => handOverInProcess(prefill, decode, { prompt, sampling: opts[i] })));
    expect(handed.map((h) => h.tokens)).toEqual(expected);
    for (const { shipped } of handed) {
      expect(shipped.layers).toHaveLength(src.config.nLayers);
      for (const { k } of shipped.layers) expect(k.byteLength).toBe(shipped.tokens * src.config.nKvHeads * src.config.headDim * 4);
    }
    await prefill.idle();
    await decode.idle();
    expect(prefillModel.kv.pool.used).toBe(0);
    expect(decodeModel.kv.pool.used).toBe(0);
    prefillModel.destroy();
    decodeModel.destroy();
  });

  it('over TCP (KvSender to KvReceiver), layers split into many small frames: the outputs of one engine, and every block comes back', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const prompts = ['Once upon a time there was a girl named Lily who', 'The dog'].map((p) => src.tokenizer.encode(p));
    const opts = sampling(10);
    const colocated = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const expected = (await generate(colocated, src.tokenizer, prompts.map((tokens) => ({ tokens, options: opts })))).results.map((r) => r.tokens);
    colocated.destroy();

    const prefillModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const decodeModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const prefill = new Engine(prefillModel, src.tokenizer);
    const decode = new Engine(decodeModel, src.tokenizer);
    const fingerprint = modelFingerprint(src);
    const logs: string[] = [];
    const outputs = new Map<number, { tokens: number[]; resolve: (t: number[]) => void }>();
    const receiver = new KvReceiver({
      engine: decode,
      workerId: 'd',
      fingerprint,
      log: (l) => logs.push(l),
      adopt: (spec, kv) => {
        const out = outputs.get(spec.rid)!;
        decode.adopt({ prompt: spec.prompt, generated: spec.generated, sampling: spec.sampling, events: { onToken: (e) => out.tokens.push(e.token), onFinish: () => out.resolve(out.tokens) } }, kv);
        return null;
      },
    });
    const address = await receiver.listen('127.0.0.1', 0);
    // one K/V row of stories260K is 4 heads x 8 dims x 4 bytes: 200-byte frames hold one token each
    const sender = new KvSender({ workerId: 'p', fingerprint, log: (l) => logs.push(l), frameBytes: 200 });
    const results = await Promise.all(
      prompts.map(
        (prompt, rid) =>
          new Promise<number[]>((resolve, reject) => {
            const out = { tokens: [] as number[], resolve };
            outputs.set(rid, out);
            const transfer = sender.begin({ id: 'd', address });
            prefill.submit({
              prompt,
              sampling: opts,
              events: { onToken: (e) => out.tokens.push(e.token) },
              handoff: {
                onKv: (tokens, rows, layers) => transfer.stream(tokens, rows, layers),
                onHandoff: (generated) => void transfer.finish({ rid, attempt: 1, prompt, generated, sampling: opts }).catch(reject),
              },
            });
          }),
      ),
    );
    expect(results).toEqual(expected);
    expect(sender.stats.transfers).toBe(2);
    expect(sender.stats.bytes).toBe(prompts.reduce((n, p) => n + 2 * src.config.nLayers * p.length * src.config.nKvHeads * src.config.headDim * 4, 0));
    expect(logs).toEqual([]);
    await decode.idle();
    expect(prefillModel.kv.pool.used).toBe(0);
    expect(decodeModel.kv.pool.used).toBe(0);
    sender.close();
    await receiver.close();
    prefillModel.destroy();
    decodeModel.destroy();
  });

  it('a sequence adopted without KV recomputes its context and still gives the same tokens', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const prompt = src.tokenizer.encode('Lily wanted to play outside');
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const alone = (await generate(model, src.tokenizer, [{ tokens: prompt, options: sampling(10, 0.9, 3) }])).results[0].tokens;
    const engine = new Engine(model, src.tokenizer);
    // resume after 4 tokens, as the front does when a decode worker dies
    const rest = await new Promise<number[]>((resolve, reject) => {
      const tokens: number[] = [];
      engine.adopt({ prompt, generated: alone.slice(0, 4), sampling: sampling(10, 0.9, 3), events: { onToken: (e) => tokens.push(e.token), onFinish: (_r, _u, err) => (err ? reject(err) : resolve(tokens)) } }, null);
    });
    expect([...alone.slice(0, 4), ...rest]).toEqual(alone);
    model.destroy();
  });

  it('a prefill-only sequence that ends with its first token finishes instead of handing over', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    let handedOver = false;
    const reason = await new Promise<string>((resolve) =>
      engine.submit({
        prompt: src.tokenizer.encode('Once'),
        sampling: sampling(1),
        events: { onFinish: (r) => resolve(r) },
        handoff: { onKv: () => {}, onHandoff: () => (handedOver = true) },
      }),
    );
    expect(reason).toBe('length');
    expect(handedOver).toBe(false);
    await engine.idle();
    expect(model.kv.pool.used).toBe(0);
    model.destroy();
  });
});
