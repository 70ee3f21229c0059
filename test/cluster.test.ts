import { describe, expect, it, vi } from 'vitest';
import type { FinishReason, SamplingOptions, TokenEvent } from '../src/engine/engine.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { openModel } from '../src/model/source.ts';
import { buildServer } from '../src/server/app.ts';
import { Cluster } from '../src/workers/cluster.ts';
import { type ControlPlane, type FromWorker, LIVENESS_TIMEOUT_MS, STATUS_INTERVAL_MS, type ToWorker, type WorkerInfo, type WorkerLoad } from '../src/workers/control.ts';

/**
 * The front's bookkeeping under message orders that real processes produce only by chance:
 * tokens of one request arriving over two links out of order, late messages of an attempt that
 * was dispatched again, workers lost mid-request, control links that were down (messages lost).
 * The workers are scripted (a control plane that records what the front sends and lets the test
 * answer); test/disaggregate.test.ts runs the real ones.
 */
class ScriptedPlane implements ControlPlane {
  sent: { to: string; m: ToWorker }[] = [];
  private handler: (id: string, m: FromWorker) => void = () => {};
  private gone: (id: string, reason: string) => void = () => {};
  private linkHandler: (up: boolean) => void = () => {};
  send(to: string, m: ToWorker): void {
    this.sent.push({ to, m });
  }
  onMessage(h: (id: string, m: FromWorker) => void): void {
    this.handler = h;
  }
  onGone(h: (id: string, reason: string) => void): void {
    this.gone = h;
  }
  onLink(h: (up: boolean) => void): void {
    this.linkHandler = h;
  }
  /** the front's own control link drops (false) or comes back (true) */
  link(up: boolean): void {
    this.linkHandler(up);
  }
  async close(): Promise<void> {}
  from(id: string, m: FromWorker): void {
    this.handler(id, m);
  }
  kill(id: string): void {
    this.gone(id, 'process exited (SIGKILL)');
  }
  /** the dispatches so far */
  get prefills() {
    return this.sent.filter((s) => s.m.type === 'prefill').map((s) => ({ to: s.to, ...(s.m as Extract<ToWorker, { type: 'prefill' }>) }));
  }
}

const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });
const token = (t: number): TokenEvent => ({ token: t, text: `<${t}>` });

async function setup(o: { decodeFree?: number[]; prefillBacklog?: number; maxAttempts?: number } = {}) {
  const source = await openModel(DEFAULT_MODEL);
  const plane = new ScriptedPlane();
  const cluster = new Cluster({ plane, tokenizer: source.tokenizer, config: source.config, fingerprint: 'model-a', prefillBacklog: o.prefillBacklog, maxAttempts: o.maxAttempts, log: () => {} });
  const info = (id: string, role: 'prefill' | 'decode', fingerprint = 'model-a'): WorkerInfo => ({
    id,
    role,
    fingerprint,
    device: 'scripted',
    pid: 1,
    host: 'h',
    maxSequenceTokens: 2048,
    ...(role === 'decode' ? { data: { host: '127.0.0.1', port: 9 } } : {}),
  });
  const load = (free = 1000): WorkerLoad => ({ waiting: 0, running: 0, kvBlocksUsed: 1000 - free, kvBlocksTotal: 1000, blockSize: 16, nKvHeads: 4, kvBytesSent: 0, kvTransferSeconds: 0, kvTransfers: 0 });
  const status = (id: string, role: 'prefill' | 'decode', free?: number, fingerprint?: string, link = 0) => plane.from(id, { type: 'status', worker: info(id, role, fingerprint), load: load(free), steps: [], link });
  status('p0', 'prefill');
  (o.decodeFree ?? [1000, 1000]).forEach((free, i) => status(`d${i}`, 'decode', free));
  const submit = (prompt: number[], maxTokens: number) => {
    const tokens: number[] = [];
    let finished: { reason: FinishReason; error?: Error } | null = null;
    const handle = cluster.submit({ prompt, sampling: greedy(maxTokens), events: { onToken: (e) => tokens.push(e.token), onFinish: (reason, _u, error) => (finished = { reason, error }) } });
    return { handle, tokens, finished: () => finished };
  };
  return { plane, cluster, status, submit };
}

describe('disaggregated front (scripted workers)', () => {
  it('dispatches to the decode worker with the most free KV, and holds requests while the prefill worker is full', async () => {
    const { plane, cluster, status, submit } = await setup({ decodeFree: [200, 900], prefillBacklog: 6 });
    submit([1, 2, 3, 4, 5, 6], 4);
    submit([1, 2, 3, 4, 5, 6], 4); // p0 has 6 tokens queued, its backlog: this one waits at the front
    expect(plane.prefills.map((p) => [p.to, p.decode.id])).toEqual([['p0', 'd1']]);
    expect(cluster.waiting).toBe(1);
    const first = plane.prefills[0].req;
    plane.from('p0', { type: 'token', rid: first.rid, attempt: first.attempt, index: 0, event: token(7) }); // prefilled: room again
    status('p0', 'prefill');
    expect(plane.prefills).toHaveLength(2);
    expect(cluster.waiting).toBe(0);
    await cluster.close();
  });

  it('emits tokens in order though the decode worker sends its tokens before the prefill worker sends the first one, and finishes after the last', async () => {
    const { plane, cluster, submit } = await setup();
    const r = submit([1, 2, 3], 3);
    const { rid, attempt } = plane.prefills[0].req;
    plane.from('d1', { type: 'adopted', rid, attempt });
    plane.from('d1', { type: 'token', rid, attempt, index: 1, event: token(11) });
    plane.from('d1', { type: 'token', rid, attempt, index: 2, event: token(12) });
    plane.from('d1', { type: 'finish', rid, attempt, generated: 3, reason: 'length', usage: { promptTokens: 3, completionTokens: 3 } });
    expect(r.tokens).toEqual([]);
    expect(r.finished()).toBeNull();
    plane.from('p0', { type: 'token', rid, attempt, index: 0, event: token(10) });
    expect(r.tokens).toEqual([10, 11, 12]);
    expect(r.finished()?.reason).toBe('length');
    await cluster.idle();
    await cluster.close();
  });

  it('a decode worker lost mid-stream: the request goes out again with its tokens; late messages of the old attempt are ignored and stopped', async () => {
    const { plane, cluster, submit } = await setup();
    const r = submit([1, 2, 3], 4);
    const a1 = plane.prefills[0];
    const dead = a1.decode.id;
    plane.from('p0', { type: 'token', rid: a1.req.rid, attempt: 1, index: 0, event: token(10) });
    plane.from(dead, { type: 'adopted', rid: a1.req.rid, attempt: 1 });
    plane.from(dead, { type: 'token', rid: a1.req.rid, attempt: 1, index: 1, event: token(11) });
    plane.kill(dead);
    const a2 = plane.prefills[1];
    expect(a2.req.attempt).toBe(2);
    expect(a2.req.generated).toEqual([10, 11]); // resumes after what the client already has
    expect(a2.decode.id).not.toBe(dead);
    // a late token of attempt 1 (e.g. from p0's buffer) must not reach the client; the sender is told to stop
    plane.from('p0', { type: 'token', rid: a1.req.rid, attempt: 1, index: 2, event: token(99) });
    expect(r.tokens).toEqual([10, 11]);
    expect(plane.sent.some((s) => s.to === 'p0' && s.m.type === 'cancel' && s.m.attempt === 1)).toBe(true);
    plane.from('p0', { type: 'token', rid: a2.req.rid, attempt: 2, index: 2, event: token(12) });
    plane.from(a2.decode.id, { type: 'adopted', rid: a2.req.rid, attempt: 2 });
    plane.from(a2.decode.id, { type: 'token', rid: a2.req.rid, attempt: 2, index: 3, event: token(13) });
    plane.from(a2.decode.id, { type: 'finish', rid: a2.req.rid, attempt: 2, generated: 4, reason: 'length', usage: { promptTokens: 3, completionTokens: 4 } });
    expect(r.tokens).toEqual([10, 11, 12, 13]);
    expect(r.finished()?.reason).toBe('length');
    expect(cluster.workers().find((w) => w.id === dead)?.state).toBe('lost');
    await cluster.close();
  });

  it('a handover that keeps failing ends with an error after the attempts; one that fails while queued is not queued twice', async () => {
    const { plane, cluster, submit } = await setup({ maxAttempts: 2 });
    const r = submit([1, 2, 3], 4);
    const fail = (attempt: number) => plane.from('p0', { type: 'handover-failed', rid: 1, attempt, generated: [], reason: 'connection refused' });
    fail(1);
    fail(1); // a duplicate of a stale attempt changes nothing
    expect(plane.prefills.map((p) => p.req.attempt)).toEqual([1, 2]);
    fail(2);
    expect(r.finished()?.reason).toBe('error');
    expect(r.finished()?.error?.message).toMatch(/after 2 attempts: handover from p0 failed: connection refused/);
    await cluster.idle();
    await cluster.close();
  });

  it('the last decode worker lost: running and waiting requests end with an error at once; submit answers busy', async () => {
    const { plane, cluster, submit } = await setup({ decodeFree: [1000], prefillBacklog: 3 });
    const running = submit([1, 2, 3], 4);
    const waiting = submit([1, 2, 3], 4);
    expect(cluster.waiting).toBe(1);
    plane.kill('d0');
    expect(running.finished()?.error?.message).toMatch(/no decode worker is left/);
    expect(waiting.finished()?.error?.message).toMatch(/no decode worker is left/);
    expect(() => submit([1, 2], 2)).toThrow(/no prefill or no decode worker is up/);
    await cluster.close();
  });

  it('a worker of another model is refused; a cancel reaches the worker that holds the request', async () => {
    const { plane, cluster, status, submit } = await setup();
    status('intruder', 'decode', 1000, 'model-b');
    expect(plane.sent.find((s) => s.to === 'intruder')?.m).toMatchObject({ type: 'refuse', reason: expect.stringMatching(/fingerprint/) });
    expect(cluster.workers().map((w) => w.id)).not.toContain('intruder');
    const r = submit([1, 2, 3], 4);
    const { rid, attempt } = plane.prefills[0].req;
    r.handle.cancel();
    expect(plane.sent.at(-1)).toEqual({ to: 'p0', m: { type: 'cancel', rid, attempt } });
    plane.from('p0', { type: 'finish', rid, attempt, generated: 0, reason: 'cancelled', usage: { promptTokens: 3, completionTokens: 0 } });
    expect(r.finished()?.reason).toBe('cancelled');
    await cluster.close();
  });
  it("the front's control link down and back: workers are not lost meanwhile; requests in flight go out again with their tokens once workers are heard, without spending an attempt", async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
    try {
      const { plane, cluster, status, submit } = await setup({ maxAttempts: 1 });
      const r = submit([1, 2, 3], 4);
      const a1 = plane.prefills[0];
      const { rid } = a1.req;
      plane.from('p0', { type: 'token', rid, attempt: 1, index: 0, event: token(10) });
      plane.from(a1.decode.id, { type: 'adopted', rid, attempt: 1 });
      plane.from(a1.decode.id, { type: 'token', rid, attempt: 1, index: 1, event: token(11) });
      plane.link(false);
      const waiting = submit([4, 5], 2); // no worker can be reached: it waits at the front
      vi.advanceTimersByTime(3 * LIVENESS_TIMEOUT_MS); // silence while the front's own link is down is not the workers'
      expect(cluster.workers().map((w) => w.state)).toEqual(['up', 'up', 'up']);
      plane.link(true);
      // attempt 1 is stopped wherever it ran (its messages may be lost); nothing goes out before workers are heard
      expect(plane.sent.filter((s) => s.m.type === 'cancel' && s.m.rid === rid && s.m.attempt === 1).map((s) => s.to).sort()).toEqual([a1.decode.id, 'p0'].sort());
      expect(plane.prefills).toHaveLength(1);
      vi.advanceTimersByTime(LIVENESS_TIMEOUT_MS - STATUS_INTERVAL_MS); // the liveness clock restarted when the link came back
      expect(cluster.workers().map((w) => w.state)).toEqual(['up', 'up', 'up']);
      status('p0', 'prefill');
      status('d0', 'decode');
      status('d1', 'decode');
      const a2 = plane.prefills.find((p) => p.req.rid === rid && p.req.attempt === 2)!;
      expect(a2.req.generated).toEqual([10, 11]);
      expect(plane.prefills.some((p) => p.req.rid === waiting.handle.id)).toBe(true);
      plane.from('p0', { type: 'token', rid, attempt: 1, index: 2, event: token(99) }); // late, of the old attempt
      plane.from('p0', { type: 'token', rid, attempt: 2, index: 2, event: token(12) });
      plane.from(a2.decode.id, { type: 'adopted', rid, attempt: 2 });
      plane.from(a2.decode.id, { type: 'token', rid, attempt: 2, index: 3, event: token(13) });
      plane.from(a2.decode.id, { type: 'finish', rid, attempt: 2, generated: 4, reason: 'length', usage: { promptTokens: 3, completionTokens: 4 } });
      expect(r.tokens).toEqual([10, 11, 12, 13]);
      expect(r.finished()?.reason).toBe('length'); // maxAttempts 1, yet no error: the outage spent no attempt
      await cluster.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it("a worker whose control link reconnected: the requests it held go out again with their tokens, without spending an attempt; other workers' requests go on", async () => {
    const { plane, cluster, status, submit } = await setup({ maxAttempts: 2 });
    const r1 = submit([1, 2, 3], 4);
    const r2 = submit([1, 2], 4);
    const [a1, b1] = plane.prefills;
    expect(a1.decode.id).not.toBe(b1.decode.id); // spread over both decode workers
    for (const [p, t] of [[a1, 10], [b1, 20]] as const) {
      plane.from('p0', { type: 'token', rid: p.req.rid, attempt: 1, index: 0, event: token(t) });
      plane.from(p.decode.id, { type: 'adopted', rid: p.req.rid, attempt: 1 });
    }
    status(a1.decode.id, 'decode', 1000, 'model-a', 1); // its link was down: tokens it sent meanwhile may be lost
    expect(plane.sent.filter((s) => s.m.type === 'cancel').map((s) => [s.to, (s.m as { rid: number }).rid])).toEqual(expect.arrayContaining([[a1.decode.id, a1.req.rid]]));
    expect(plane.prefills.map((p) => [p.req.rid, p.req.attempt])).toEqual([[a1.req.rid, 1], [b1.req.rid, 1], [a1.req.rid, 2]]);
    expect(plane.prefills[2].req.generated).toEqual([10]);
    status(a1.decode.id, 'decode', 1000, 'model-a', 1); // the same link count again: nothing more
    expect(plane.prefills).toHaveLength(3);
    // a real failure now is the first to count: one more try of the 2 allowed
    plane.from('p0', { type: 'handover-failed', rid: a1.req.rid, attempt: 2, generated: [10], reason: 'connection reset' });
    expect(plane.prefills.map((p) => [p.req.rid, p.req.attempt])).toEqual([[a1.req.rid, 1], [b1.req.rid, 1], [a1.req.rid, 2], [a1.req.rid, 3]]);
    expect(r1.finished()).toBeNull();
    plane.from(b1.decode.id, { type: 'finish', rid: b1.req.rid, attempt: 1, generated: 1, reason: 'stop', usage: { promptTokens: 2, completionTokens: 1 } });
    expect(r2.finished()?.reason).toBe('stop');
    await cluster.close();
  });

  it('head-wise KV and key-index bytes: the sums over the workers up, in /metrics and /health; null while no worker reports them', async () => {
    const { plane, cluster, status } = await setup();
    expect(cluster.kvBytesByKind()).toBeNull();
    expect(cluster.annBytes()).toBeNull();
    const worker = (id: string, role: 'prefill' | 'decode'): WorkerInfo => ({ id, role, fingerprint: 'model-a', device: 'scripted', pid: 1, host: 'h', maxSequenceTokens: 2048 });
    const load = (retrieval: number, streaming: number): WorkerLoad => ({
      waiting: 0, running: 1, kvBlocksUsed: 10, kvBlocksTotal: 1000, blockSize: 16, nKvHeads: 4, headwise: { fullColumns: 1, sink: 4, recent: 32 },
      kvBytesByKind: { retrieval, streaming }, annBytes: retrieval / 8, kvBytesSent: 0, kvTransferSeconds: 0, kvTransfers: 0,
    });
    plane.from('p0', { type: 'status', worker: worker('p0', 'prefill'), load: load(5120, 15360), steps: [], link: 0 });
    plane.from('d0', { type: 'status', worker: { ...worker('d0', 'decode'), data: { host: '127.0.0.1', port: 9 } }, load: load(10240, 30720), steps: [], link: 0 });
    expect(cluster.kvBytesByKind()).toEqual({ retrieval: 15360, streaming: 46080 });
    expect(cluster.annBytes()).toBe(1920);
    const server = buildServer({ engine: cluster, modelId: 'stories260K' });
    const text = (await server.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(text).toContain('wgserve_kv_bytes{kind="retrieval"} 15360');
    expect(text).toContain('wgserve_kv_bytes{kind="streaming"} 46080');
    expect(text).toContain('wgserve_ann_bytes 1920');
    expect((await server.app.inject({ method: 'GET', url: '/health' })).json()).toMatchObject({ kv_bytes: { retrieval: 15360, streaming: 46080 }, ann_bytes: 1920 });
    await server.close();
    plane.kill('d0');
    expect(cluster.kvBytesByKind()).toEqual({ retrieval: 5120, streaming: 15360 });
    expect(cluster.annBytes()).toBe(640);
    status('p0', 'prefill'); // its pattern gone (a status without the bytes): none left
    expect(cluster.kvBytesByKind()).toBeNull();
    expect(cluster.annBytes()).toBeNull();
    await cluster.close();
  });

  it('n choices go out as requests of their own with seeds seed + i, each reporting to its choice; the handle cancels them all', async () => {
    const { plane, cluster } = await setup();
    const tokens: number[][] = [[], [], []];
    const handle = cluster.submit({ prompt: [1, 2, 3], sampling: { ...greedy(4), temperature: 1, seed: 7 }, choices: tokens.map((t) => ({ onToken: (e) => t.push(e.token) })) });
    expect(plane.prefills.map((p) => p.req.sampling.seed)).toEqual([7, 8, 9]);
    for (const [i, p] of plane.prefills.entries()) {
      plane.from('p0', { type: 'token', rid: p.req.rid, attempt: 1, index: 0, event: token(10 + i) });
      plane.from(p.decode.id, { type: 'adopted', rid: p.req.rid, attempt: 1 });
    }
    expect(tokens).toEqual([[10], [11], [12]]);
    handle.cancel();
    expect(plane.sent.filter((s) => s.m.type === 'cancel').map((s) => [s.to, (s.m as { rid: number }).rid])).toEqual(plane.prefills.map((p) => [p.decode.id, p.req.rid]));
    await cluster.close();
  });
});
